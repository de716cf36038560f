"""Where the project lives: the repository root and its ``configs/`` folder. No side effects on import."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = PROJECT_ROOT / "configs"


def export_project_root() -> None:
    """Set ``$PROJECT_ROOT`` (read by ``configs/paths/default.yaml``) unless the user already set it, e.g. to
    put ``logs/`` elsewhere on a cluster. Called by the entry points before Hydra composes the config."""
    os.environ.setdefault("PROJECT_ROOT", str(PROJECT_ROOT))


def register_resolvers() -> None:
    """OmegaConf resolvers the configs use, for readable folder names:

    - ``${name_suffix:${name}}``: ``""`` for an unnamed run, ``"_<name>"`` otherwise
      (``logs/train/runs/<date>_<time>_<name>``);
    - ``${swept_overrides:}``: this multirun job's values of the swept keys as a folder name, e.g.
      ``loss-ohem`` for ``python train.py -m loss=ce,wce,ohem trainer.max_epochs=1`` (job folder
      ``2_loss-ohem``; see :func:`swept_overrides`);
    - ``${slurm_gpus_per_node:...}`` and its kin: the resources ``launcher=submitit_slurm`` asks for, from the
      trainer (``seg_template/slurm.py``).
    """
    from omegaconf import OmegaConf

    from seg_template.slurm import register_resolvers as register_slurm_resolvers

    register_slurm_resolvers()

    if not OmegaConf.has_resolver("name_suffix"):
        OmegaConf.register_new_resolver("name_suffix", lambda name: f"_{name}" if name not in (None, "") else "")
    if not OmegaConf.has_resolver("swept_overrides"):
        OmegaConf.register_new_resolver("swept_overrides", swept_overrides)


#: Hydra's sweep functions: a value written as one of these lists several values
_SWEEP_FUNCTIONS = ("range(", "choice(", "interval(", "glob(", "tag(")


def is_sweep_value(value: str) -> bool:
    """True for an override value that Hydra expands into several jobs: ``a,b`` or a sweep function. Commas
    inside brackets, braces or quotes (a list value like ``[32,32]``) do not count."""
    if value.startswith(_SWEEP_FUNCTIONS) or value.startswith(("sort(", "shuffle(")):
        return True
    depth, quote = 0, ""
    for char in value:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == "," and depth == 0:
            return True
    return False


def _sweep_command_line(file: Path) -> list[str]:
    """The sweep's options as Hydra wrote them to ``hydra.overrides.task`` of its ``multirun.yaml`` (read
    through the file-config door's reader: no YAML aliases, a size cap)."""
    from seg_template.errors import ConfigError
    from seg_template.file_config import read_run_yaml

    found = read_run_yaml(file)
    for key in ("hydra", "overrides", "task"):
        found = found.get(key) if isinstance(found, dict) else None
    if not isinstance(found, list) or not all(isinstance(a, str) for a in found):
        raise ConfigError(f"'{file}' holds no list of options at hydra.overrides.task, where Hydra writes the "
                          "sweep's command line: it was changed after the sweep started")
    return found


#: the characters a job folder's name keeps: a command line takes the path as it is (``ckpt_path=<job>/...``
#: parses as one value: no ``=``, ``,``, quotes, brackets or spaces)
_FOLDER_WORD = re.compile(r"[^A-Za-z0-9._-]+")
#: job folder names stay far below the file systems' 255-byte limit; the job number keeps them unique
MAX_FOLDER_NAME = 120


def folder_name(overrides: list[str]) -> str:
    """Overrides as one folder name that a Hydra command line (and a shell) takes unquoted: ``key=value``
    becomes ``key-value``, the pairs are joined by ``_``, group paths ``a/b`` become ``a.b`` and every other
    character outside ``[A-Za-z0-9._-]`` becomes ``-``: ``["loss=ohem", "optimizer.lr=0.01"]`` ->
    ``loss-ohem_optimizer.lr-0.01``; ``data.crop_size=[32,32]`` -> ``data.crop_size-32-32``."""
    words = []
    for override in overrides:
        key, _, value = override.partition("=")
        key = _FOLDER_WORD.sub("-", key.lstrip("+~").replace("/", ".")).strip("-")
        word = _FOLDER_WORD.sub("-", value)
        # a negative number keeps its sign; other runs of replaced characters at the ends go
        word = ("-" + word[1:].strip("-")) if value.startswith("-") else word.strip("-")
        words.append(f"{key}-{word}")
    return "_".join(words)[:MAX_FOLDER_NAME]


def swept_overrides(argv: list[str] | None = None) -> str:
    """This job's overrides of the keys the sweep varies (command-line sweeps and ``hydra.sweeper.params``)
    as one folder name (:func:`folder_name`: ``loss-ohem_optimizer.lr-0.01``); ``""`` outside a multirun.
    Hydra's ``hydra.sweep.subdir`` prefixes the job number, so names cut at the length cap stay unique."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return ""
    swept = swept_keys(argv)
    chosen = [o for o in HydraConfig.get().overrides.task if o.partition("=")[0].lstrip("+~") in swept]
    return folder_name(chosen)


def swept_keys(argv: list[str] | None = None) -> set[str]:
    """The keys the current sweep varies: ``hydra.sweeper.params`` and the command line's sweep values
    (``argv``, by default ``sys.argv`` or, in a job a launcher started, the sweep's ``multirun.yaml``)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return set()
    hydra_cfg = HydraConfig.get()
    params = hydra_cfg.sweeper.get("params") or {}
    swept = {str(key).lstrip("+~") for key in params}
    args = (sys.argv if argv is None else argv)[1:]
    if argv is None and not any("=" in a for a in args):
        # a job that a launcher started in a process of its own (submitit: python -m submitit.core._submit
        # <folder>): the sweep's command line is in the multirun.yaml Hydra wrote before launching
        launched = Path(hydra_cfg.sweep.dir) / "multirun.yaml"
        if launched.is_file():
            args = _sweep_command_line(launched)
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep and not arg.startswith("-") and is_sweep_value(value):
            swept.add(key.lstrip("+~"))
    return swept


#: characters a Hydra override value may hold unquoted (a path of ours: letters, digits, ``/ . _ - + @ : %``)
_PLAIN_VALUE = re.compile(r"[A-Za-z0-9/._+@:%-]+")


def hydra_value(text: str) -> str:
    """``text`` as a Hydra override value: as it is when Hydra's grammar takes it, else single-quoted (a path
    with ``=``, ``,``, spaces or brackets: ``'a/1_loss=ce/b'``). In Hydra's quoted strings a backslash escapes
    only a quote or the backslashes before one, so only those are escaped."""
    if _PLAIN_VALUE.fullmatch(text) and not text[0].isdigit():
        return text
    quoted = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", text)
    quoted = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, quoted)  # they precede the closing quote
    return f"'{quoted}'"


def argv_values(args: list[str]) -> dict[str, str]:
    """``{key: value}`` of the ``key=value`` options of a command line (``+`` dropped, flags left out), as
    typed: what the entry points look at before Hydra parses the command line."""
    return dict(a.lstrip("+").split("=", 1) for a in args if "=" in a and not a.startswith("-"))
