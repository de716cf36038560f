"""Scaling out over nodes, proven on one machine: ``trainer.num_nodes=2`` with one process per node, each node's
process started by its own ``torchrun`` (as on two machines), scores exactly what one process does. Through
SLURM (two node entries on this machine): tests/test_slurm_cluster.py; DDP on one node: test_scale_out.py."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

#: seconds a two-node evaluation may take before both nodes are killed (it takes ~15 s on 2 busy cores)
NODES_TIMEOUT_S = 120


def free_port() -> int:
    """A TCP port nothing listens on now (the OS picks it), for the rendezvous of the nodes' torchruns."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(node_rank: int, port: int, *command: str) -> list[str]:
    """The ``torchrun`` command line of node ``node_rank`` of 2, one process per node, rendezvous on localhost."""
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
            f"--node-rank={node_rank}", "--master-addr=127.0.0.1", f"--master-port={port}", *command]


def run_nodes(commands: list[list[str]], logs: list[Path], timeout_s: float = NODES_TIMEOUT_S) -> list[int]:
    """Start ``commands`` together (each in a process group of its own, output to its log) and return their exit
    statuses. When one fails, or ``timeout_s`` passes, every node still running is killed with its ranks: a rank
    whose peer is gone would wait in the rendezvous or a collective for DDP's 30-minute timeout."""
    from seg_template.paths import PROJECT_ROOT

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}  # 2 nodes on 2 cores: no spin-waits
    procs = []
    try:
        for command, log in zip(commands, logs, strict=True):
            with open(log, "w") as out:
                procs.append(subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=out,
                                              stderr=subprocess.STDOUT, start_new_session=True))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            codes = [p.poll() for p in procs]
            if all(code is not None for code in codes) or any(codes):
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)  # torchrun and its rank
            p.wait()
    return [p.returncode for p in procs]


@pytest.mark.slow
def test_two_nodes_score_exactly_what_one_process_does(compose_cfg, tmp_path: Path) -> None:
    """``eval.py trainer=ddp_cpu trainer.devices=1 trainer.num_nodes=2`` started on 2 "nodes" by torchrun (Lightning
    takes the world from torchrun's variables) against eval's task in one process (this one), on a val split of 5
    images (3 + 2 over the ranks): the same confusion matrix bit for bit, summing to the split's labelled pixels,
    and the same mIoU, aAcc and per-class IoU in metrics.csv. Both nodes get the same command, hydra.run.dir
    included; both ranks write into that one run folder: rank 0 claims it and writes its record (.hydra/),
    results and eval.log; rank 1 waits for the claim (before it, anything rank 1 wrote would make rank 0 refuse
    the folder as another run's), then writes only its log, eval_rank1.log (seg_template/run_folder.py).

    The checkpoint is an untrained model (seeded): it predicts several classes, so the matrix has off-diagonal
    entries, which a tiny trained model predicting only background would not.
    """
    import torch

    from seg_template.eval import evaluate as evaluate_task
    from tests.helpers import save_checkpoint
    from tests.test_scale_out import ODD, SAVE_CONFMAT, assert_same_scores, labelled_pixels, scores

    ckpt = save_checkpoint(compose_cfg(overrides=ODD), tmp_path / "untrained.ckpt")
    overrides = [f"ckpt_path={ckpt}", "split=val", *ODD, SAVE_CONFMAT]
    one = tmp_path / "one_process"
    evaluate_task(compose_cfg("eval", ["trainer=cpu", *overrides], output_dir=one))

    run = tmp_path / "two_nodes"
    command = ["eval.py", "trainer=ddp_cpu", "trainer.devices=1", "trainer.num_nodes=2", *overrides,
               f"hydra.run.dir={run}", f"paths.log_dir={tmp_path / 'logs'}"]
    port, logs = free_port(), [tmp_path / "node0.log", tmp_path / "node1.log"]
    codes = run_nodes([torchrun(0, port, *command), torchrun(1, port, *command)], logs)
    out = [log.read_text() for log in logs]
    assert codes == [0, 0], f"node 0:\n{out[0][-3000:]}\nnode 1:\n{out[1][-3000:]}"
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in out[0] and "GLOBAL_RANK: 1, MEMBER: 2/2" in out[1]

    assert sorted(os.listdir(run)) == [".hydra", "confmat_val.pt", "eval.log", "eval_rank1.log", "hparams.yaml",
                                       "metrics.csv"]
    rank0, rank1 = (run / "eval.log").read_text(), (run / "eval_rank1.log").read_text()
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in rank0 and "GLOBAL_RANK: 1" not in rank0  # a log per rank
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in rank1 and "GLOBAL_RANK: 0" not in rank1
    assert sorted(os.listdir(run / ".hydra")) == ["config.yaml", "hydra.yaml", "overrides.yaml"]  # lock released
    record = OmegaConf.to_container(OmegaConf.load(run / ".hydra" / "hydra.yaml").hydra)  # not resolved
    assert (record["output_subdir"], record["job"]["name"]) == (".hydra", "${task_name}")  # rank 0's, not rank 1's
    expected = torch.load(one / "confmat_val.pt", weights_only=True)
    assert int(expected.sum()) == labelled_pixels(compose_cfg, "val")
    assert int((expected - expected.diag().diag()).sum()) > 0  # misclassified pixels counted too
    assert torch.equal(torch.load(run / "confmat_val.pt", weights_only=True), expected)
    assert_same_scores(scores(run, "val"), scores(one, "val"))  # scores() also checks one results row: rank 0's

