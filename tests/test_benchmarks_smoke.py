"""Smoke test: the benchmark script runs end to end and reports every ratio."""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_core.py"

# One line per benchmark's headline ratio; a missing line means a benchmark
# stopped running or stopped reporting.
RATIO_LINES = [
    "RATIO init_trace jscope/haiku = ",
    "RATIO init_trace jscope/flax core = ",
    "RATIO apply_eager jscope/hand-written = ",
    "RATIO jit_step jscope/hand-written = ",
    "RATIO get_variable reads jscope/hand-written = ",
]


def test_bench_core_quick_runs_and_reports_every_ratio():
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
    # Exit code 1 means a correctness check failed: contestants disagreeing on
    # outputs or shapes, or jscope's jitted step compiling to different HLO.
    assert proc.returncode == 0, out
    assert "CHECK FAILED" not in out
    missing = [line for line in RATIO_LINES if line not in proc.stdout]
    assert not missing, f"missing ratio lines {missing} in:\n{out}"
    # The HLO comparison ran and found equal flops and instruction counts.
    assert "| jit_step | flops (jscope, hand) |" in proc.stdout
    assert "| jit_step | HLO instructions (jscope, hand) |" in proc.stdout
