"""Smoke test: the checkpoint benchmark runs end to end and reports every line."""

import os
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_checkpoint.py"

# A missing line means a benchmark stopped running or stopped reporting.
REPORT_LINES = [
    "RATIO save jscope/orbax throughput = ",
    "RATIO restore jscope/orbax throughput = ",
    "BLOCK nonblocking js.Saver save(blocking=False) = ",
    "| save | jscope (js.Saver) | ",
    "| restore | orbax (StandardCheckpointer) | ",
    "COST save integrity share of the call = ",
    "COST restore integrity share of the call = ",
    "| fault | overwrite: kills / mid-save / mid-swap / restored | ",
]


def test_bench_checkpoint_quick_runs_and_reports(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--dir", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    # Exit code 1 means a correctness check failed: a restored tree differed from
    # the saved one, or a killed save (sync, async or overwriting) left no
    # checkpoint that verifies and restores bit-exactly.
    assert proc.returncode == 0, out
    assert "CHECK FAILED" not in out
    missing = [line for line in REPORT_LINES if line not in proc.stdout]
    assert not missing, f"missing lines {missing} in:\n{out}"
    fault = re.search(
        r"^FAULT trials=(\d+) mid_save=\d+ mid_swap=\d+ restored=(\d+)$",
        proc.stdout,
        re.M,
    )
    assert fault and fault.group(1) == fault.group(2) == "3", out
    assert os.listdir(tmp_path) == []  # the script cleans up after itself
