"""scripts/bench_models.py produces a markdown row per model with the measured stride and aux head."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_models.py"


pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


def test_bench_table_rows():
    bench = load_script("bench_models")
    table = bench.main(["--models", "lraspp_mobilenet_v3", "hrnet_w18_small", "--size", "64", "--reps", "1",
                        "--warmup", "0", "--num-classes", "3"])
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in table.splitlines() if line.startswith("| ") and "params" not in line}
    assert rows["lraspp_mobilenet_v3"][1:3] == ["8", "no"]
    assert rows["hrnet_w18_small"][1:3] == ["4", "no"]
    assert float(rows["hrnet_w18_small"][0]) == pytest.approx(1.5, abs=0.1)  # HRNetV2-W18-Small-v1: 1.5M
    assert float(rows["lraspp_mobilenet_v3"][3]) > 0


def test_bench_unknown_model_is_named():
    bench = load_script("bench_models")
    with pytest.raises(SystemExit, match="no_such_net"):
        bench.main(["--models", "no_such_net", "--size", "64"])
