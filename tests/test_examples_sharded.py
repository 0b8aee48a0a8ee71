"""The sharded GPT example: a mesh, a table of specs, loss falling, 1 or 2 processes."""

import math
import os
import pathlib
import re
import subprocess
import sys
import time

import pytest
from helpers import interrupt_before_any_save, run_script

SCRIPT = (
    pathlib.Path(__file__).resolve().parents[1] / "examples" / "sharded_training.py"
)

STEP_LINE = re.compile(r"^step +(\d+)/(\d+)  loss ([0-9.]+)$", re.MULTILINE)
INIT_LINE = re.compile(
    r"^sharded init: device \d+ holds ([0-9,]+) bytes of ([0-9,]+) "
    r"\(summary: ([0-9,]+) per device\)$",
    re.MULTILINE,
)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("one")
    return run_script(SCRIPT, "--quick", "--checkpoint", ckpt, timeout=600).stdout


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("two")
    args = ("--quick", "--processes", "2", "--checkpoint", ckpt)
    return run_script(SCRIPT, *args, timeout=600).stdout


def _losses(output):
    steps = [(int(s), float(loss)) for s, _, loss in STEP_LINE.findall(output)]
    assert len(steps) >= 3, output
    return steps


def _int(text):
    return int(text.replace(",", ""))


def test_prints_the_mesh(one_process):
    assert "mesh {'data': 2, 'model': 4}: 8 cpu devices, 1 process(es)" in one_process


@pytest.mark.parametrize(
    ("path", "shape", "spec"),
    [
        # Specs as jscope gives them: trailing Nones dropped.
        ("wte/embeddings", "(128, 32)", "P('model')"),
        ("wpe", "(32, 32)", "P()"),
        ("h/attn/query/kernel", "(2, 32, 4, 8)", "P(None, None, 'model')"),
        ("h/attn/output/kernel", "(2, 4, 8, 32)", "P(None, 'model')"),
        ("h/mlp/c_fc/kernel", "(2, 32, 128)", "P(None, None, 'model')"),
        ("h/mlp/c_proj/kernel", "(2, 128, 32)", "P(None, 'model')"),
        ("h/mlp/c_proj/bias", "(2, 32)", "P()"),
        ("head/kernel", "(32, 128)", "P(None, 'model')"),
    ],
)
def test_table_shows_each_variables_spec(one_process, path, shape, spec):
    row = next(
        (line for line in one_process.splitlines() if line.startswith(path + " ")),
        None,
    )
    assert row is not None, one_process
    assert shape in row and spec in row, row


def test_every_path_rule_matched(one_process):
    assert "path rules that matched no variable: none" in one_process


def test_sharded_init_holds_a_fraction_on_each_device(one_process):
    held, whole, planned = map(_int, INIT_LINE.search(one_process).groups())
    assert held == planned  # what the summary promised is what a device holds
    assert held < whole / 2  # most bytes split 4 ways over "model"


def test_loss_falls_from_a_uniform_guess(one_process):
    steps = _losses(one_process)
    assert steps[0][0] == 1 and steps[-1][0] == 30
    assert abs(steps[0][1] - math.log(128)) < 0.5
    assert steps[-1][1] < steps[0][1] - 1.0, one_process
    first, last = re.search(
        r"mean loss: first \d+ steps ([0-9.]+) -> last \d+ steps ([0-9.]+)",
        one_process,
    ).groups()
    assert float(last) < float(first)


def test_two_processes_load_their_own_rows(two_processes):
    assert "mesh {'data': 2, 'model': 4}: 8 cpu devices, 2 process(es)" in two_processes
    assert "process 0 loads rows 0..7 of each batch" in two_processes
    assert "process 1 loads rows 8..15 of each batch" in two_processes


def test_two_processes_train_as_one(one_process, two_processes):
    # Same data, same bit-identical init: the same losses, up to the order of sums.
    one, two = _losses(one_process), _losses(two_processes)
    assert [s for s, _ in one] == [s for s, _ in two]
    for (step, a), (_, b) in zip(one, two, strict=True):
        assert b == pytest.approx(a, rel=1e-3), step


@pytest.mark.parametrize("run", ["one_process", "two_processes"])
def test_checkpoint_restores_into_the_same_shards(run, request):
    output = request.getfixturevalue(run)
    assert re.search(
        r"^saved \S+gpt-30; restored into the same shardings, equal: True$",
        output,
        re.MULTILINE,
    ), output


def test_a_failing_process_stops_the_run():
    # Both children refuse a mesh of 9 devices; the launcher reports the first
    # failure, kills what is left and exits with 1, well before its timeout.
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--processes", "2", "--mesh", "3x3"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert re.search(r"^process [01] failed \(exit code 1\)$", proc.stdout, re.M)
    assert "--mesh 3x3: need data x model with 8 devices" in proc.stderr
    assert time.monotonic() - start < 200


def _start(*args):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONIOENCODING": "utf-8"}
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), *map(str, args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("processes", [1, 2])
def test_ctrl_c_stops_with_one_line(processes):
    # With 2 processes the launcher passes the Ctrl-C on; the first child speaks.
    proc = _start("--quick", "--steps", 100_000, "--processes", processes)
    out, at = interrupt_before_any_save(
        proc, lambda line: bool(STEP_LINE.match(line)), "step"
    )
    assert at >= 1
    assert [s for s, _, _ in STEP_LINE.findall(out)][0] == "1"
