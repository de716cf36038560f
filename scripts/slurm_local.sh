#!/usr/bin/env bash
# A real single-machine SLURM cluster (slurmctld + slurmd + munged, SLURM 22.05 from Debian) for CI and the
# slow tests: sbatch / srun / squeue / scontrol / scancel work from any process on this machine.
#
#   scripts/slurm_local.sh start    install the packages when missing (root, apt-get), start the daemons,
#                                   wait until the node(s) are idle; idempotent (exit 0 when already up)
#   scripts/slurm_local.sh stop     cancel every job, stop the daemons this script started (by their PID files)
#   scripts/slurm_local.sh status   exit 0 when the cluster is up, 1 when not
#
# Environment:
#   SLURM_LOCAL_DIR      state folder: config, controller state, spool, logs, PID files [/tmp/seg_template_slurm]
#   SLURM_LOCAL_NODES    2: two nodes node1, node2 (two slurmd on this machine, ports 6818 and 6819), each with
#                        half the CPUs: multi-node jobs (trainer.num_nodes=2) run; 1: one node named after this
#                        host with all the CPUs [2]
#   SLURM_LOCAL_TIMEOUT  seconds start waits for the node(s) to report idle [30]
#   SLURM_LOCAL_CPUS     CPUs the cluster offers: more than the machine has lets the tests' small 1-CPU jobs run
#                        side by side (their steps mostly wait) [the larger of 4 and nproc]
#
# The config is written to $SLURM_LOCAL_DIR/slurm.conf and copied to /etc/slurm/slurm.conf, the path the Debian
# client commands read by default, so no SLURM_CONF is needed (exporting SLURM_CONF=$SLURM_LOCAL_DIR/slurm.conf
# works too). An /etc/slurm/slurm.conf that this script did not write is never overwritten: start refuses.
#
# Needs root (slurmd runs jobs as their users). No systemd: the daemons are started here directly (Debian's
# policy-rc.d in containers keeps the packages from starting them). No accounting (no slurmdbd, no sacct): a
# finished job stays visible to `scontrol show job` / `squeue -t all` for MinJobAge (300 s). No cgroups: the
# job's processes are tracked through /proc (proctrack/linuxproc), memory and CPU limits are bookkeeping only.
# Latencies are tuned for tests: a job starts ~1 s after sbatch; a requeued job starts again after ~12 s
# instead of ~2 min. start takes ~1 s when the packages are there.
set -euo pipefail
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"   # the daemons, runuser and setsid live there

readonly STATE_DIR="${SLURM_LOCAL_DIR:-/tmp/seg_template_slurm}"
readonly NODES="${SLURM_LOCAL_NODES:-2}"
readonly TIMEOUT="${SLURM_LOCAL_TIMEOUT:-30}"
readonly CONF="$STATE_DIR/slurm.conf"
readonly SYSTEM_CONF=/etc/slurm/slurm.conf
readonly MARKER="# Written by seg_template scripts/slurm_local.sh"
readonly PACKAGES=(slurmctld slurmd slurm-client munge)
readonly MUNGE_SOCKET=/run/munge/munge.socket.2   # the clients' default: no AuthInfo=socket= needed
readonly CTLD_PORT=6817
readonly SLURMD_PORT=6818                          # node2 (SLURM_LOCAL_NODES=2) gets 6819

say() { echo "slurm_local: $*"; }
die() { echo "slurm_local: $*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------------------------
# Packages

ensure_packages() {
  local t0=$SECONDS missing=()
  local cmd
  for cmd in slurmctld slurmd sbatch munged; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
  done
  if ((${#missing[@]} == 0)); then
    say "packages present (checked in $((SECONDS - t0)) s)"
    return
  fi
  [[ $EUID -eq 0 ]] || die "missing ${missing[*]}; installing ${PACKAGES[*]} needs root (uid $EUID)"
  command -v apt-get >/dev/null 2>&1 || die "missing ${missing[*]} and no apt-get to install ${PACKAGES[*]}"
  say "installing ${PACKAGES[*]} (missing: ${missing[*]})"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || die "apt-get update failed"
  apt-get install -y -qq "${PACKAGES[@]}" || die "apt-get install ${PACKAGES[*]} failed"
  for cmd in slurmctld slurmd sbatch munged; do
    command -v "$cmd" >/dev/null 2>&1 || die "$cmd still missing after apt-get install ${PACKAGES[*]}"
  done
  say "packages installed in $((SECONDS - t0)) s"
}

# ---------------------------------------------------------------------------------------------------------------
# PID files: every daemon this script started has one under $STATE_DIR/run (munged's under $STATE_DIR/munge,
# where the munge user can write it). A PID counts only while it is alive and runs the expected program, so a
# stale file whose PID was reused by something else is never signalled.

node_names() {
  if [[ $NODES == 1 ]]; then hostname -s; else echo node1 node2; fi
}

# "name:pidfile" for each daemon of this state folder, in start order (the slurmd ones: those start wrote,
# whatever SLURM_LOCAL_NODES is now)
daemons() {
  echo "munged:$STATE_DIR/munge/munged.pid"
  echo "slurmctld:$STATE_DIR/run/slurmctld.pid"
  local file
  for file in "$STATE_DIR"/run/slurmd-*.pid; do
    [[ -e $file ]] && echo "slurmd:$file"
  done
  return 0
}

# true while process $1 runs (a zombie, a daemon that died while still this script's child, does not count)
alive() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }   # the fields after "(comm) "
  [[ -n $stat && ${stat:0:1} != Z ]]
}

# PID in $2 if it is alive and its program is $1; nothing otherwise
live_pid() {
  local name=$1 file=$2 pid
  [[ -r $file ]] || return 0
  pid=$(tr -dc '0-9' <"$file")
  [[ -n $pid ]] || return 0
  if alive "$pid" && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$name" ]]; then echo "$pid"; fi
  return 0
}

# all the slurm daemons alive and the controller answering, every node idle/mixed/allocated
cluster_up() {
  local entry
  compgen -G "$STATE_DIR/run/slurmd-*.pid" >/dev/null || return 1
  for entry in $(daemons); do
    [[ $entry == munged:* ]] && continue   # munged may be a system one this script did not start
    [[ -n $(live_pid "${entry%%:*}" "${entry#*:}") ]] || return 1
  done
  local states
  states=$(SLURM_CONF=$CONF timeout 10 sinfo -h -N -o '%T' 2>/dev/null) || return 1
  [[ -n $states ]] || return 1
  ! grep -qvE '^(idle|mixed|allocated|completing)$' <<<"$states"
}

# ---------------------------------------------------------------------------------------------------------------
# munge: slurm authenticates every message with it

munge_works() { timeout 5 munge -n 2>/dev/null | timeout 5 unmunge >/dev/null 2>&1; }

start_munge() {
  if munge_works; then
    say "munged already serving $MUNGE_SOCKET (not started by this script: left alone on stop)"
    return
  fi
  if [[ ! -s /etc/munge/munge.key ]]; then
    say "creating /etc/munge/munge.key"
    install -d -o munge -g munge -m 0700 /etc/munge
    if command -v mungekey >/dev/null 2>&1; then
      mungekey --create --keyfile=/etc/munge/munge.key --force
    else
      dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
  fi
  chown munge:munge /etc/munge/munge.key
  chmod 0400 /etc/munge/munge.key
  install -d -o munge -g munge -m 0755 /run/munge
  install -d -o munge -g munge -m 0700 "$STATE_DIR/munge"
  # as the munge user (munged refuses root unless --force): it forks, then writes its PID file
  runuser -u munge -- munged --socket="$MUNGE_SOCKET" --pid-file="$STATE_DIR/munge/munged.pid" \
    --log-file="$STATE_DIR/munge/munged.log" --seed-file="$STATE_DIR/munge/munged.seed" \
    </dev/null >>"$STATE_DIR/log/munged.out" 2>&1 9>&- ||
    fail_with_log "munged did not start" "$STATE_DIR/munge/munged.log"
  local i
  for i in $(seq 50); do
    munge_works && return
    sleep 0.1
  done
  fail_with_log "munged does not answer (munge -n | unmunge)" "$STATE_DIR/munge/munged.log"
}

# ---------------------------------------------------------------------------------------------------------------
# Config

write_config() {
  local host cpus mem_mb node_lines node_list
  host=$(hostname -s)
  cpus=${SLURM_LOCAL_CPUS:-$(($(nproc) > 4 ? $(nproc) : 4))}
  mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)   # leave 10 % to the system
  if [[ $NODES == 1 ]]; then
    node_lines="NodeName=$host NodeAddr=127.0.0.1 Port=$SLURMD_PORT CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN"
    node_list=$host
  else
    # two slurmd processes on this machine, told apart by -N <name> and their ports
    node_lines="NodeName=node1 NodeHostname=$host NodeAddr=127.0.0.1 Port=$SLURMD_PORT CPUs=$((cpus / 2)) RealMemory=$((mem_mb / 2)) State=UNKNOWN
NodeName=node2 NodeHostname=$host NodeAddr=127.0.0.1 Port=$((SLURMD_PORT + 1)) CPUs=$((cpus / 2)) RealMemory=$((mem_mb / 2)) State=UNKNOWN"
    node_list=node1,node2
  fi

  cat >"$CONF.new" <<EOF
$MARKER for the state folder $STATE_DIR
# (regenerated on every start; edit the script, not this file)
ClusterName=seg_template
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# A requeued job may start again only once its old credential expired: 10 s instead of 120 s (the job is then
# picked by the periodic scheduler, every sched_interval seconds: ~12 s from requeue to restart)
AuthInfo=cred_expire=10
StateSaveLocation=$STATE_DIR/state
SlurmdSpoolDir=$STATE_DIR/spool/slurmd-%n
SlurmctldPidFile=$STATE_DIR/run/slurmctld.pid
SlurmdPidFile=$STATE_DIR/run/slurmd-%n.pid
SlurmctldLogFile=$STATE_DIR/log/slurmctld.log
SlurmdLogFile=$STATE_DIR/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info

# No cgroups in containers: processes tracked through /proc, no binding, no limits enforced
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
# The node's configured CPUs / memory count, even where the hardware probe reports otherwise
SlurmdParameters=config_overrides

# Scheduling: CPUs and memory are consumable, so 1-CPU jobs share the node; a job without --mem books
# DefMemPerCPU MB per CPU (without it, a job takes the node's whole memory and jobs run one at a time)
SchedulerType=sched/backfill
# batch_sched_delay=0: a submitted job is scheduled within ~1 s, not batched with the next ones for 3 s
SchedulerParameters=sched_interval=2,batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=500

# Jobs: requeue on node failure, short kill grace, finished jobs kept 300 s for scontrol/squeue (no sacct)
JobRequeue=1
KillWait=5
MinJobAge=300
ReturnToService=2
InactiveLimit=0
MailProg=/bin/true

# No accounting daemon
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none

$node_lines
PartitionName=debug Nodes=$node_list Default=YES MaxTime=INFINITE State=UP
EOF
  mv "$CONF.new" "$CONF"

  # the client commands' default path
  if [[ -e $SYSTEM_CONF ]] && ! grep -qF "$MARKER" "$SYSTEM_CONF"; then
    die "$SYSTEM_CONF exists and was not written by this script: not overwriting it (remove it, or use that cluster)"
  fi
  install -d -m 0755 /etc/slurm
  cp "$CONF" "$SYSTEM_CONF.new" && mv "$SYSTEM_CONF.new" "$SYSTEM_CONF"
}

# ---------------------------------------------------------------------------------------------------------------
# Daemons

# $1 (what failed, "slurmctld did not start"): the tail of the log $2, the daemons stopped, and the one line
# that says it with the log's last error
fail_with_log() {
  local what=$1 log=$2
  echo "slurm_local: $what; last lines of $log:" >&2
  tail -n 15 "$log" 2>/dev/null | sed 's/^/    /' >&2 || true
  stop_daemons >/dev/null 2>&1 || true
  # the one-line reason: the log's last fatal or error line, less its timestamp
  local why
  why=$(grep -E 'fatal|error' "$log" 2>/dev/null | grep -v 'pmix\|MPI:' | tail -n 1 | sed 's/^\[[^]]*\] *//' || true)
  die "$what${why:+: $why} (log: $log)"
}

# start one slurm daemon: in the foreground (-D) of a background process in a session of its own (no terminal,
# no process group shared with the caller: a Ctrl-C or a test runner's kill of its group leaves it running);
# it writes its own PID file. Fails as soon as it exits.
start_daemon() {
  local name=$1 pidfile=$2 log=$3
  shift 3
  rm -f "$pidfile"
  # setsid -w: $! stays alive exactly as long as the daemon, whether setsid had to fork or not
  # (9>&-: the daemon must not hold the lock of this script)
  SLURM_CONF=$CONF setsid -w "$@" -D </dev/null >>"$STATE_DIR/log/$name.out" 2>&1 9>&- &
  local launcher=$! i
  for i in $(seq 100); do
    [[ -n $(live_pid "$name" "$pidfile") ]] && return
    alive "$launcher" || break
    sleep 0.1
  done
  cat "$STATE_DIR/log/$name.out" >>"$log" 2>/dev/null || true
  fail_with_log "$name did not start" "$log"
}

do_start() {
  [[ $NODES == 1 || $NODES == 2 ]] || die "SLURM_LOCAL_NODES must be 1 or 2, not '$NODES'"
  [[ $(uname -s) == Linux ]] || die "needs Linux (this is $(uname -s))"
  [[ $EUID -eq 0 ]] || die "needs root to run slurmd (uid $EUID)"
  ensure_packages
  if cluster_up; then
    local running wanted
    running=$(SLURM_CONF=$CONF sinfo -h -N -o '%N' | sort | tr '\n' ' ')
    wanted=$(node_names | tr ' ' '\n' | sort | tr '\n' ' ')
    [[ $running == "$wanted" ]] ||
      die "already running from $STATE_DIR with nodes ${running}(SLURM_LOCAL_NODES=$NODES asks for ${wanted% }): stop it first"
    say "already running from $STATE_DIR (nodes: $(SLURM_CONF=$CONF sinfo -h -N -o '%N:%T' | tr '\n' ' '))"
    return
  fi
  local t0
  t0=$(date +%s.%N)
  stop_daemons >/dev/null 2>&1 || true   # whatever is left of an earlier, half-dead start
  mkdir -p "$STATE_DIR"/{run,log,state,spool}
  chmod 0755 "$STATE_DIR"
  write_config
  resolve_node_names
  start_munge
  # -c: no jobs recovered from an earlier run (a fresh cluster on every start)
  start_daemon slurmctld "$STATE_DIR/run/slurmctld.pid" "$STATE_DIR/log/slurmctld.log" slurmctld -c -f "$CONF"
  local node
  for node in $(node_names); do
    mkdir -p "$STATE_DIR/spool/slurmd-$node"
    local args=(slurmd -f "$CONF")
    [[ $NODES == 1 ]] || args+=(-N "$node")
    start_daemon slurmd "$STATE_DIR/run/slurmd-$node.pid" "$STATE_DIR/log/slurmd-$node.log" "${args[@]}"
  done

  # wait for every node to register idle; fail early when a daemon dies meanwhile
  local deadline=$((SECONDS + TIMEOUT)) entry
  until cluster_up; do
    for entry in $(daemons); do
      local name=${entry%%:*} pidfile=${entry#*:}
      [[ $name == munged ]] && continue
      if [[ -z $(live_pid "$name" "$pidfile") ]]; then
        local log=$STATE_DIR/log/slurmctld.log
        [[ $name == slurmd ]] && log=$STATE_DIR/log/$(basename "$pidfile" .pid).log
        fail_with_log "$name exited" "$log"
      fi
    done
    if ((SECONDS >= deadline)); then
      echo "slurm_local: sinfo: $(SLURM_CONF=$CONF sinfo -h -N -o '%N:%T %E' 2>&1 | tr '\n' ' ')" >&2
      fail_with_log "node(s) not idle ${TIMEOUT} s after start" "$STATE_DIR/log/slurmctld.log"
    fi
    sleep 0.5
  done
  say "SLURM up in $(awk -v t0="$t0" -v t1="$(date +%s.%N)" 'BEGIN {printf "%.1f", t1 - t0}') s" \
    "(state dir $STATE_DIR, nodes: $(SLURM_CONF=$CONF sinfo -h -N -o '%N:%T' | tr '\n' ' '))"
}

# SIGTERM to the PIDs given as name:pid, up to 10 s for them all to exit, then SIGKILL
stop_pids() {
  local entry i left=()
  for entry in "$@"; do
    kill -TERM "${entry#*:}" 2>/dev/null && left+=("$entry")
  done
  for i in $(seq 100); do
    local still=()
    for entry in "${left[@]}"; do
      if alive "${entry#*:}"; then still+=("$entry"); else say "stopped ${entry%%:*} (${entry#*:})"; fi
    done
    left=("${still[@]}")
    ((${#left[@]} > 0)) || return 0
    sleep 0.1
  done
  for entry in "${left[@]}"; do
    kill -KILL "${entry#*:}" 2>/dev/null || true
    say "killed ${entry%%:*} (${entry#*:}): still running 10 s after SIGTERM"
  done
}

# the daemons this script started, by their PID files: the slurm ones first, then munged
stop_daemons() {
  local entry pid slurm=() munge=()
  for entry in $(daemons); do
    pid=$(live_pid "${entry%%:*}" "${entry#*:}")
    if [[ -n $pid && $entry == munged:* ]]; then
      munge+=("munged:$pid")
    elif [[ -n $pid ]]; then
      slurm+=("${entry%%:*}:$pid")
    fi
  done
  ((${#slurm[@]} == 0)) || stop_pids "${slurm[@]}"
  ((${#munge[@]} == 0)) || stop_pids "${munge[@]}"
  for entry in $(daemons); do rm -f "${entry#*:}"; done
}

# What is left of jobs when slurmctld died before stop could cancel them: every slurmstepd of this cluster (one
# that keeps a file of this state folder open, its slurmd log) and all the processes under it, SIGKILLed.
kill_leftover_steps() {
  local dir fd comm steps=()
  for dir in /proc/[0-9]*; do
    read -r comm 2>/dev/null <"$dir/comm" || continue
    [[ $comm == slurmstepd ]] || continue
    for fd in "$dir"/fd/*; do
      if [[ $(readlink "$fd" 2>/dev/null) == "$STATE_DIR"/* ]]; then
        steps+=("${dir#/proc/}")
        break
      fi
    done
  done
  ((${#steps[@]} > 0)) || return 0
  # the process tree under them (parent links from ps), breadth first
  local tree=("${steps[@]}") i=0 pid ppid
  local -A children=()
  while read -r pid ppid; do children[$ppid]+=" $pid"; done < <(ps -e -o pid=,ppid=)
  while ((i < ${#tree[@]})); do
    # shellcheck disable=SC2206
    tree+=(${children[${tree[i]}]:-})
    i=$((i + 1))
  done
  say "killing ${#steps[@]} leftover slurmstepd and their job processes: ${tree[*]}"
  kill -KILL "${tree[@]}" 2>/dev/null || true
}

# The node names must resolve, as on a real cluster: a multi-node job's processes meet at its first node's name
# (Lightning's MASTER_ADDR under SLURM). Names that do not resolve get a line in /etc/hosts, removed by stop.
readonly HOSTS_MARK="# seg_template slurm_local node names"

resolve_node_names() {
  local node missing=()
  for node in $(node_names); do
    getent hosts "$node" >/dev/null 2>&1 || missing+=("$node")
  done
  if ((${#missing[@]})); then
    echo "127.0.0.1 ${missing[*]} $HOSTS_MARK" >>/etc/hosts
    say "added ${missing[*]} -> 127.0.0.1 to /etc/hosts"
  fi
}

forget_node_names() {
  if grep -q "$HOSTS_MARK" /etc/hosts 2>/dev/null; then
    # rewritten in place (in a container /etc/hosts is often a mount point that cannot be replaced)
    local kept
    kept=$(grep -v "$HOSTS_MARK" /etc/hosts)
    printf '%s\n' "$kept" >/etc/hosts
  fi
}

do_stop() {
  [[ -d $STATE_DIR ]] || { say "not running (no $STATE_DIR)"; return; }
  # cancel the jobs first: their slurmstepd processes outlive slurmd otherwise
  if [[ -n $(live_pid slurmctld "$STATE_DIR/run/slurmctld.pid") ]]; then
    local jobs
    jobs=$(SLURM_CONF=$CONF timeout 10 squeue -h -o '%i' 2>/dev/null | tr '\n' ' ' || true)
    if [[ -n ${jobs// /} ]]; then
      say "cancelling jobs $jobs"
      # shellcheck disable=SC2086
      SLURM_CONF=$CONF timeout 10 scancel $jobs || true
      local deadline=$((SECONDS + 20))
      while ((SECONDS < deadline)) && [[ -n $(SLURM_CONF=$CONF timeout 10 squeue -h -o '%i' 2>/dev/null) ]]; do
        sleep 0.5
      done
    fi
  fi
  stop_daemons
  kill_leftover_steps
  forget_node_names
  say "stopped (state dir $STATE_DIR)"
}

do_status() {
  if cluster_up; then
    say "up (state dir $STATE_DIR, nodes: $(SLURM_CONF=$CONF sinfo -h -N -o '%N:%T' | tr '\n' ' '))"
  else
    say "not running (state dir $STATE_DIR)"
    return 1
  fi
}

# start and stop one at a time (two test sessions starting together, a stop during a start)
lock() {
  mkdir -p "$(dirname "$STATE_DIR")"
  exec 9>"$STATE_DIR.lock"
  flock -w 120 9 || die "another start or stop of $STATE_DIR holds $STATE_DIR.lock"
}

case "${1:-}" in
  start) lock && do_start ;;
  stop) lock && do_stop ;;
  status) do_status ;;
  *) die "usage: $0 start|stop|status" ;;
esac
