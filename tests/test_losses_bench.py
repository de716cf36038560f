"""scripts/bench_losses.py: its rows and measuring functions on a tiny shape, both tables in this process, and
the whole script (slow)."""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import bench_losses  # noqa: E402

TINY = "2x5x8x8:32x32"
SMALL = "2x6x16x16:64x64"  # upsampled logits of 192 KiB: the naive rows raise the RSS measurably


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Nothing here asserts a time, and on a loaded machine every intra-op barrier of the naive rows can wait
    for a descheduled thread (tens of ms per op): one thread keeps these tests fast."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_rows_agree_with_the_references(one_thread):
    for kind in ("random", "confident"):
        logits, target = bench_losses.make_inputs(TINY, kind, "cpu")
        assert target.shape == (2, 32, 32) and logits.requires_grad
        references = {"OHEM": bench_losses.ROWS["OHEM sort reference"]()(logits, target),
                      "CE": bench_losses.plain_ce(logits, target)}
        for row in ("OhemCrossEntropy", "OHEM (memory_efficient)", "CrossEntropy", "CE (memory_efficient)"):
            want = references["OHEM" if "OHEM" in row or "Ohem" in row else "CE"]
            torch.testing.assert_close(bench_losses.ROWS[row]()(logits, target), want, rtol=1e-5, atol=1e-5)


def test_each_terms_two_rows_compute_the_same_loss(one_thread):
    """Same value and gradient on both rows of a term: the table compares one loss computed two ways."""
    logits, target = bench_losses.make_inputs(TINY, "confident", "cpu")
    for name, term in bench_losses.TERMS.items():
        results = []
        for row in (term.naive, term.row):
            fn = bench_losses.ROWS[row]()
            if row != "plain CE (torch)":
                assert fn.memory_efficient is (row == term.row), row  # built directly, the flag as named
            loss = fn(logits, target)
            loss.backward()
            results.append((loss.detach(), logits.grad))
            logits.grad = None
        (naive, naive_grad), (value, grad) = results
        torch.testing.assert_close(value, naive, rtol=1e-5, atol=1e-6, msg=name)
        torch.testing.assert_close(grad, naive_grad, rtol=1e-4, atol=1e-7, msg=name)


def test_rows_for_terms():
    assert bench_losses.rows_for(["ce", "lovasz"]) == [
        bench_losses.BASELINE, "CrossEntropy", "CE (memory_efficient)", "LovaszSoftmax", "Lovasz (memory_efficient)"]
    assert bench_losses.rows_for(["ohem"], ["CrossEntropy", bench_losses.BASELINE]) == [
        bench_losses.BASELINE, "OhemCrossEntropy", "OHEM (memory_efficient)", "OHEM sort reference", "CrossEntropy"]
    every = bench_losses.rows_for(bench_losses.TERMS)
    assert set(every) == set(bench_losses.ROWS) and len(every) == len(bench_losses.ROWS)  # each row in a term


def test_ratios_and_goal_verdict():
    """Ratios pair the reps (the median of per-rep ratios), and the goal says yes only when both hold."""
    times = {"DiceLoss": [1.0, 2.0, 4.0], "Dice (memory_efficient)": [1.1, 1.0, 3.6]}
    result = bench_losses.term_result("dice", "a", "random", times, {"DiceLoss": 100.0,
                                                                     "Dice (memory_efficient)": 20.0})
    assert result.shape == bench_losses.SHAPES["a"] and result.term == "dice"
    assert result.naive_ms == 2000.0 and result.ms == 1100.0 and result.naive_mib == 100.0
    assert result.time_ratio == pytest.approx(0.9) and result.memory_ratio == pytest.approx(0.2)
    assert result.goal_met == "yes"
    verdict = bench_losses.goal_verdict
    assert verdict(True, 1.2, 0.25) == "yes"
    assert verdict(True, 1.21, 0.1) == "no" and verdict(True, 0.5, 0.26) == "no"
    assert verdict(True, math.nan, 0.1) == "no" and verdict(True, 1.0, math.nan) == "no"
    assert verdict(True, 1.0, None) == "?" and verdict(False, 9.0, 9.0) == "n/a"
    assert bench_losses.memory_ratio({"a": 1.0, "b": 0.0}, "a", "b") is None
    lovasz = bench_losses.term_result("lovasz", SMALL, "confident",
                                      {"LovaszSoftmax": [5.0], "Lovasz (memory_efficient)": [4.0]},
                                      {"LovaszSoftmax": 30.0, "Lovasz (memory_efficient)": 6.0})
    assert (lovasz.time_ratio, lovasz.memory_ratio, lovasz.goal_met) == (0.8, 0.2, "n/a")


def test_time_rows_and_peak_memory_in_process(one_thread):
    rows = list(bench_losses.ROWS)
    times = bench_losses.time_rows(rows, TINY, "confident", "cpu", reps=2, warmup=0)
    assert list(times) == rows and all(len(t) == 2 and min(t) > 0 for t in times.values())
    assert bench_losses.peak_memory("OhemCrossEntropy", TINY, "random", "cpu", steps=1) >= 0


def test_both_tables_in_process(one_thread):
    """Every term's line: the naive and efficient columns, finite ratios, a verdict; then every row vs CE."""
    lines: list[str] = []
    terms = list(bench_losses.TERMS)
    results = bench_losses.run([SMALL], ["confident"], terms, [], "cpu", reps=1, warmup=0,
                               runner=bench_losses._in_this_process, echo=lines.append)
    assert [r.term for r in results] == [bench_losses.TERMS[t].label for t in terms]
    for r in results:
        assert r.shape == SMALL and r.kind == "confident"
        assert min(r.naive_ms, r.ms) > 0 and r.naive_mib > 0 and r.mib >= 0, r
        assert math.isfinite(r.time_ratio) and r.time_ratio > 0, r
        assert r.memory_ratio is not None and math.isfinite(r.memory_ratio), r
        assert r.goal_met in (("n/a",) if r.term == "lovasz" else ("yes", "no")), r

    text = "\n".join(lines)
    assert bench_losses.LOVASZ_NOTE in text
    assert bench_losses.TERM_HEADER.split() == ["shape", "inputs", "term", "naive", "ms", "naive", "MiB", "eff", "ms",
                                                "eff", "MiB", "time", "x", "naive", "memory", "x", "naive", "goal",
                                                "met"]
    start = lines.index(bench_losses.TERM_HEADER + "\n" + "-" * len(bench_losses.TERM_HEADER)) + 1
    term_lines = lines[start:start + len(terms)]
    assert lines[start + len(terms)].startswith("goal met: memory x naive <= 0.25 and time x naive <= 1.2")
    for line, r in zip(term_lines, results, strict=True):
        assert line == bench_losses.term_line(r) and line.startswith(SMALL)
        tokens = line.split()
        assert all(math.isfinite(float(x)) for x in tokens[-7:-1]), line  # 4 values, 2 ratios
        assert tokens[-1] == r.goal_met
    rows = bench_losses.rows_for(terms)
    start = lines.index(bench_losses.ROW_HEADER + "\n" + "-" * len(bench_losses.ROW_HEADER)) + 1
    row_lines = lines[start:]
    assert len(row_lines) == len(rows)
    for line, row in zip(row_lines, rows, strict=True):
        assert line.split("confident", 1)[1].strip().startswith(row)
        assert all(math.isfinite(float(x)) for x in line.split()[-4:]), line
    assert row_lines[0].split()[-3] == "1.00" and row_lines[0].split()[-1] == "1.00"  # the baseline to itself


def test_bad_arguments_exit_with_a_message(capsys):
    for argv, match in ((["--shapes", "c"], "neither one of"), (["--inputs", "noise"], "unknown"),
                        (["--rows", "focal"], "unknown"), (["--terms", "dice,tversky"], r"unknown \['tversky'\]"),
                        (["--terms", ""], "at least one")):
        with pytest.raises(SystemExit, match=match):
            bench_losses.main(argv)
    for argv in (["--reps", "0"], ["--warmup", "-1"]):  # argparse's usage error (status 2) names the option
        with pytest.raises(SystemExit) as exited:
            bench_losses.main(argv)
        assert exited.value.code == 2 and f"argument {argv[0]}: expected an integer" in capsys.readouterr().err


@pytest.mark.slow
def test_table_from_one_run():
    """The script itself: spawned processes, a quick subset of terms."""
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_losses.py"), "--shapes", SMALL,
                             "--inputs", "confident", "--terms", "dice,lovasz", "--reps", "1"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith(SMALL)]
    rows = bench_losses.rows_for(["dice", "lovasz"])
    assert len(lines) == 2 + len(rows)  # one line per term, then one per row, the baseline first
    assert lines[0].split()[2] == "dice" and lines[1].split()[2] == "lovasz"
    assert lines[1].split()[-1] == "n/a" and lines[0].split()[-1] in ("yes", "no", "?")
    for line in lines[:2]:
        assert math.isfinite(float(line.split()[-3]))  # time x naive
    for line, row in zip(lines[2:], rows, strict=True):
        assert line.split("confident", 1)[1].strip().startswith(row)
    assert lines[2].split()[-3] == "1.00"  # time ratio of the baseline to itself
