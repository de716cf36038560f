"""scripts/bench_losses.py: its measuring functions on a tiny shape, and the whole table (slow)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import bench_losses  # noqa: E402

TINY = "2x5x8x8:32x32"


def test_rows_agree_with_the_references():
    for kind in ("random", "confident"):
        logits, target = bench_losses.make_inputs(TINY, kind, "cpu")
        assert target.shape == (2, 32, 32) and logits.requires_grad
        references = {"OHEM": bench_losses.ROWS["OHEM sort reference"]()(logits, target),
                      "CE": bench_losses.plain_ce(logits, target)}
        for row in ("OhemCrossEntropy", "OHEM (memory_efficient)", "CrossEntropy", "CE (memory_efficient)"):
            want = references["OHEM" if "OHEM" in row or "Ohem" in row else "CE"]
            torch.testing.assert_close(bench_losses.ROWS[row]()(logits, target), want, rtol=1e-5, atol=1e-5)


def test_time_rows_and_peak_memory_in_process():
    rows = list(bench_losses.ROWS)
    times = bench_losses.time_rows(rows, TINY, "confident", "cpu", reps=2, warmup=1)
    assert set(times) == set(rows) and all(len(t) == 2 and min(t) > 0 for t in times.values())
    bench_losses.peak_memory("OhemCrossEntropy", TINY, "random", "cpu")  # runs; too small a shape to measure


def test_bad_arguments_exit_with_a_message(capsys):
    for argv, match in ((["--shapes", "c"], "neither one of"), (["--inputs", "noise"], "unknown"),
                        (["--rows", "focal"], "unknown")):
        with pytest.raises(SystemExit, match=match):
            bench_losses.main(argv)
    for argv in (["--reps", "0"], ["--warmup", "-1"]):  # argparse's usage error (status 2) names the option
        with pytest.raises(SystemExit) as exited:
            bench_losses.main(argv)
        assert exited.value.code == 2 and f"argument {argv[0]}: expected an integer" in capsys.readouterr().err


@pytest.mark.slow
def test_table_from_one_run():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_losses.py"), "--shapes", TINY,
                             "--inputs", "confident", "--reps", "1"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith(TINY)]
    assert len(lines) == len(bench_losses.ROWS)  # one line per row, the baseline first
    for line, row in zip(lines, bench_losses.ROWS, strict=True):
        assert line.split("confident", 1)[1].strip().startswith(row)
    assert lines[0].split()[-3] == "1.00"  # time ratio of the baseline to itself
