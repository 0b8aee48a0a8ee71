"""Smoke test: the scan benchmark runs end to end and reports every ratio."""

import os
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_scan.py"

CONTESTANTS = ["js.scan", "unrolled", "flax nn.scan", "haiku layer_stack"]

# The headline ratios; a missing line means a benchmark stopped running or
# stopped reporting.
RATIO_LINES = [
    "RATIO compile js.scan 64/4 = ",
    "RATIO compile unrolled 64/4 = ",
    "RATIO compile flax nn.scan 64/4 = ",
    "RATIO compile haiku layer_stack 64/4 = ",
    "RATIO compile js.scan/unrolled at 64 = ",
    "RATIO step js.scan/unrolled depth 16 = ",
]


def test_bench_scan_quick_runs_and_reports_every_ratio():
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    # Exit code 1 means a correctness check failed: a contestant's loss or
    # gradients differ from the plain jax.numpy loop, or its params' shapes.
    assert proc.returncode == 0, out
    assert "CHECK FAILED" not in out
    missing = [line for line in RATIO_LINES if line not in proc.stdout]
    assert not missing, f"missing ratio lines {missing} in:\n{out}"
    for line in RATIO_LINES:
        value = re.search(re.escape(line) + r"([0-9.]+)", proc.stdout)
        assert value and float(value.group(1)) > 0, line

    # The numerics check ran at every depth, for every contestant.
    for depth in (4, 16, 64):
        assert re.search(rf"depth +{depth}: loss js\.scan [0-9.]+, unrolled", out)

    # The compile table has one row per depth and contestant, and js.scan's
    # compiled step does not grow with depth while the unrolled one does.
    hlo = {}
    for depth in (4, 16, 64):
        for name in CONTESTANTS:
            row = re.search(
                rf"^\| {depth} \| {re.escape(name)} (\| \d+ ){{4}}\| (\d+) \|$",
                proc.stdout,
                re.MULTILINE,
            )
            assert row, f"no compile row for {name} at depth {depth}:\n{out}"
            hlo[depth, name] = int(row.group(2))
    assert hlo[4, "js.scan"] == hlo[16, "js.scan"] == hlo[64, "js.scan"]
    assert hlo[4, "unrolled"] < hlo[16, "unrolled"] < hlo[64, "unrolled"]
