"""Smoke test: the layers benchmark runs end to end and reports every number."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_layers.py"

MATCHED = ["jscope", "flax linen", "haiku", "hand-written"]
STOCK = ["flax linen (stock BatchNorm)", "haiku (stock BatchNorm, hk.dropout)"]


@pytest.fixture(scope="module")
def output():
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    # Exit code 1 means a correctness check failed: a contestant's variables,
    # loss, updated params or moving averages differ, or the compiled steps
    # no longer do the same arithmetic.
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "CHECK FAILED" not in proc.stdout + proc.stderr
    return proc.stdout


def _flops(output):
    rows = re.findall(
        r"^\| train_step \| flops (.+?) \| (\d+) \(([+-]\d+)\), (\d+) HLO instructions",
        output,
        re.MULTILINE,
    )
    return {name: (int(f), int(diff), int(n)) for name, f, diff, n in rows}


def test_checks_ran_before_timing(output):
    assert re.search(r"flax, haiku and jscope make the same 14 variables", output)
    assert "agree with the hand-written step for every contestant" in output


def test_jscope_compiles_to_the_hand_written_step(output):
    flops = _flops(output)
    assert set(flops) == set(MATCHED + STOCK), output
    js_flops, diff, js_hlo = flops["jscope"]
    assert js_flops > 0 and diff == 0 and js_hlo > 0
    assert flops["hand-written"] == flops["jscope"]
    for name in ("flax linen", "haiku"):  # only their dropout keys may differ
        assert abs(flops[name][0] - js_flops) < 64 * 10, flops
    for f, d, _ in flops.values():
        assert f - js_flops == d


@pytest.mark.parametrize("name", MATCHED + STOCK)
def test_reports_step_time_and_ratio_to_fastest(output, name):
    time_row = rf"^\| train_step \| {re.escape(name)} \| [0-9.]+ us/step \|"
    assert re.search(time_row, output, re.MULTILINE), output
    ratio = re.search(
        rf"^RATIO train_step {re.escape(name)}/fastest \((.+?)\) = ([0-9.]+) (.*)$",
        output,
        re.MULTILINE,
    )
    assert ratio, output
    fastest, value, verdict = ratio.groups()
    assert fastest in MATCHED
    assert float(value) > 0
    if name == "jscope":
        assert re.fullmatch(r"\(target <= 1\.02\) (PASS|FAIL)", verdict)
    else:
        assert verdict == "(info)"


def test_the_fastest_has_ratio_one(output):
    fastest = re.search(r"^RATIO train_step jscope/fastest \((.+?)\)", output, re.M)
    line = re.search(
        rf"^RATIO train_step {re.escape(fastest.group(1))}/fastest \(.+?\) = "
        r"([0-9.]+)",
        output,
        re.MULTILINE,
    )
    assert float(line.group(1)) == 1.0


def test_times_summary_of_a_thousand_variables(output):
    line = re.search(r"^SUMMARY 1000 variables = ([0-9.]+) ms", output, re.M)
    assert line, output
    assert float(line.group(1)) > 0
