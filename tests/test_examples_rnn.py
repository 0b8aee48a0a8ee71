"""The character-level RNN example trains, its loss falls, and it writes text."""

import importlib.util
import math
import pathlib
import re
import sys

import pytest
from helpers import run_script

CHAR_RNN = pathlib.Path(__file__).resolve().parents[1] / "examples" / "char_rnn.py"

STEP_LINE = re.compile(r"^step +(\d+)/(\d+)  loss ([0-9.]+)", re.MULTILINE)
EPOCH_LINE = re.compile(r"mean loss: first epoch ([0-9.]+) -> last epoch ([0-9.]+)")


@pytest.fixture(scope="module")
def smoke_output():
    return run_script(CHAR_RNN, "--smoke", timeout=180).stdout


def _losses(output):
    steps = [(int(s), int(n), float(loss)) for s, n, loss in STEP_LINE.findall(output)]
    assert len(steps) >= 3, output
    return steps


def test_smoke_prints_loss_lines_through_the_last_step(smoke_output):
    steps = _losses(smoke_output)
    numbers = [s for s, _, _ in steps]
    assert numbers[0] == 1
    assert numbers == sorted(numbers)
    assert numbers[-1] == steps[-1][1]  # the last step is reported


def test_smoke_loss_falls(smoke_output):
    steps = _losses(smoke_output)
    assert steps[-1][2] < steps[0][2], smoke_output
    epochs = EPOCH_LINE.search(smoke_output)
    assert epochs, smoke_output
    first, last = map(float, epochs.groups())
    assert last < first, smoke_output


def test_smoke_starts_near_a_uniform_guess(smoke_output):
    # An untrained model knows nothing: its loss is about log(vocabulary size).
    vocab = int(re.search(r"characters, (\d+) distinct", smoke_output).group(1))
    first = _losses(smoke_output)[0][2]
    assert abs(first - math.log(vocab)) < 0.5


@pytest.mark.parametrize(
    ("path", "shape"),
    [
        ("embedding", r"\(\d+, \d+\)"),
        ("rnn/lstm_cell/kernel", r"\(\d+, \d+\)"),
        ("rnn/lstm_cell/bias", r"\(\d+,\)"),
        ("softmax/W", r"\(\d+, \d+\)"),
        ("softmax/b", r"\(\d+,\)"),
    ],
)
def test_smoke_summary_lists_tf1_variable_paths(smoke_output, path, shape):
    # js.summary's table: path, shape, dtype, collection.
    row = rf"\b{re.escape(path)}\s*\S?\s*{shape}\s*\S?\s*float32\s*\S?\s*params\b"
    assert re.search(row, smoke_output), path


def test_smoke_writes_a_sample(smoke_output):
    assert "sample (temperature 0.7)" in smoke_output
    sample = smoke_output.split("sample (temperature 0.7)", 1)[1]
    body = sample.split("\n\n", 1)[1].split("\ntotal ", 1)[0]
    assert len(body) >= 400  # the prompt plus 400 written characters


def _load_char_rnn(monkeypatch):
    spec = importlib.util.spec_from_file_location("char_rnn", CHAR_RNN)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "char_rnn", module)  # dataclasses look it up
    spec.loader.exec_module(module)
    return module


def test_runs_without_rich(monkeypatch, capsys):
    module = _load_char_rnn(monkeypatch)
    for name in ("rich", "rich.progress"):
        monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError
    assert module.main(["--smoke", "--steps", "4"]) == 0
    out = capsys.readouterr().out
    assert [s for s, _, _ in _losses(out)] == [1, 2, 3, 4]
    assert "━" not in out  # no progress bar drawn
    assert EPOCH_LINE.search(out)
