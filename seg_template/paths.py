"""Where the project lives: the repository root and its ``configs/`` folder. No side effects on import."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = PROJECT_ROOT / "configs"


def export_project_root() -> None:
    """Set ``$PROJECT_ROOT`` (read by ``configs/paths/default.yaml``) unless the user already set it, e.g. to
    put ``logs/`` elsewhere on a cluster. Called by the entry points before Hydra composes the config."""
    os.environ.setdefault("PROJECT_ROOT", str(PROJECT_ROOT))


def register_resolvers() -> None:
    """OmegaConf resolvers the configs use: ``${name_suffix:${name}}`` is ``""`` for an unnamed run and
    ``"_<name>"`` otherwise (run folders ``logs/train/runs/<date>_<time>_<name>``)."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("name_suffix"):
        OmegaConf.register_new_resolver("name_suffix", lambda name: f"_{name}" if name not in (None, "") else "")
