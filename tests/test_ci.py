"""CI proves the README's quick start: the commands it shows exist, .ci/run runs the same test commands with the
interpreter of a virtual environment it has just built, and (under CI) the tests really run inside it.

CI once passed only because its machine had a package a fresh install lacks; these checks keep that from
coming back unnoticed.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from seg_template.paths import PROJECT_ROOT

CI_RUN = (PROJECT_ROOT / ".ci" / "run").read_text()


def quick_start_commands() -> list[str]:
    """The commands of the first ``bash`` block under the README's ``## Quick start`` heading, comments
    stripped."""
    readme = (PROJECT_ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "README's Quick start has no ```bash block"
    commands = [line.split("#", 1)[0].strip() for line in block.group(1).splitlines()]
    return [c for c in commands if c]


def makefile_targets() -> set[str]:
    return set(re.findall(r"^([\w-]+):", (PROJECT_ROOT / "Makefile").read_text(), re.M))


def make_dry_run(*args: str, **env: str) -> str:
    """``make -n -B <args>``: the commands make would run from a clean state, with ``env`` in place of the
    caller's virtual environment variables."""
    # MAKEFLAGS: under `make test PYTHON=...` the parent make passes its command-line variables down
    unset = ("VIRTUAL_ENV", "CONDA_PREFIX", "PYTHON", "BASE_PYTHON", "MAKEFLAGS", "MFLAGS", "MAKELEVEL")
    base = {k: v for k, v in os.environ.items() if k not in unset}
    result = subprocess.run(["make", "-n", "-B", *args], cwd=PROJECT_ROOT, env={**base, **env},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_quick_start_is_make_targets_that_exist() -> None:
    commands = quick_start_commands()
    assert commands, "README's Quick start lists no command"
    targets = makefile_targets()
    for command in commands:
        assert re.fullmatch(r"make [\w-]+", command), f"Quick start command is not a make target: {command!r}"
        assert command.split()[1] in targets, f"{command!r}: no such target in the Makefile"


def test_ci_runs_the_readme_test_commands_in_a_venv_it_builds() -> None:
    assert re.search(r'^rm -rf "\$VENV"$', CI_RUN, re.M), ".ci/run must start from no venv"
    assert re.search(r'-m venv "\$VENV"', CI_RUN), ".ci/run must build its own venv"
    assert re.search(r'^PY="\$VENV/bin/python"$', CI_RUN, re.M)
    tests = [c for c in quick_start_commands() if c.split()[1].startswith("test")]
    assert tests, "README's Quick start shows no test command"
    for command in (*tests, "make install"):
        assert re.search(rf'{command} PYTHON="\$PY"$', CI_RUN, re.M), f".ci/run must run `{command}` with the venv"
    # nothing is installed into, or tested with, another interpreter
    for line in CI_RUN.splitlines():
        if re.search(r"\bpip\b|\bpytest\b", line) and not line.lstrip().startswith("#"):
            assert '"$PY"' in line, f".ci/run line not using the venv: {line}"


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_uses_the_active_venv_or_builds_its_own(tmp_path: Path) -> None:
    own = make_dry_run("install")  # no environment active: a project .venv/, created first
    assert own.splitlines()[:2] == ["python3 -m venv .venv", '.venv/bin/python -m pip install -e ".[dev]"']
    active = make_dry_run("test", VIRTUAL_ENV=str(tmp_path))  # an activated venv is used as it is
    assert "-m venv" not in active
    assert f'{tmp_path}/bin/python -m pip install -e ".[dev]"' in active
    assert f'{tmp_path}/bin/python -m pytest -m "not slow"' in active


def test_ci_tests_run_inside_the_venv_ci_built() -> None:
    if os.environ.get("CI") != "true":
        pytest.skip("only under CI (CI=true): .ci/run builds the venv")
    venv = os.environ.get("SEG_TEMPLATE_CI_VENV")
    assert venv, ".ci/run must export SEG_TEMPLATE_CI_VENV, the venv it built"
    assert Path(sys.prefix).resolve() == Path(venv).resolve(), f"tests run with {sys.executable}, not in {venv}"
    # installed into the venv by .ci/run, not borrowed from the machine
    site_packages = [p for p in sys.path if p.startswith(sys.prefix) and p.endswith("site-packages")]
    installed = {d.metadata["Name"].lower() for d in importlib.metadata.distributions(path=site_packages)}
    assert {"torch", "seg_template", "pytest"} <= installed, sorted(installed)
    import torch

    assert Path(torch.__file__).resolve().is_relative_to(Path(venv).resolve()), torch.__file__
