"""The character-level RNN example trains, its loss falls, and it writes text.

It checkpoints, resumes bit-exactly, and stops on Ctrl-C with one line.
"""

import importlib.util
import math
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
from helpers import interrupt_when, run_script

import jscope as js

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"
# What js.Saver writes when Ctrl-C comes during a save, which it then finishes.
CHAR_RNN = EXAMPLES / "char_rnn.py"

STEP_LINE = re.compile(r"^step +(\d+)/(\d+)  loss ([0-9.]+)", re.MULTILINE)
EPOCH_LINE = re.compile(r"mean loss: first epoch ([0-9.]+) -> last epoch ([0-9.]+)")


@pytest.fixture(scope="module")
def smoke_output(tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("smoke")
    return run_script(CHAR_RNN, "--smoke", "--ckpt-dir", ckpt, timeout=180).stdout


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
    match = re.search(r"characters, (\d+) distinct", smoke_output)
    assert match, smoke_output
    vocab = int(match.group(1))
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
    monkeypatch.syspath_prepend(str(EXAMPLES))  # for `import _cli`
    spec = importlib.util.spec_from_file_location("char_rnn", CHAR_RNN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "char_rnn", module)  # dataclasses look it up
    spec.loader.exec_module(module)
    return module


def test_runs_without_rich_or_tqdm_and_resumes_from_nothing(
    monkeypatch, capsys, tmp_path
):
    module = _load_char_rnn(monkeypatch)
    for name in ("rich", "rich.progress", "tqdm"):
        monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError
    ckpt = tmp_path / "empty"
    assert (
        module.main(["--smoke", "--steps", "4", "--resume", "--ckpt-dir", str(ckpt)])
        == 0
    )
    out = capsys.readouterr().out
    assert f"no checkpoint in {ckpt}; starting from scratch" in out
    assert [s for s, _, _ in _losses(out)] == [1, 2, 3, 4]
    assert "━" not in out  # no progress bar drawn
    assert EPOCH_LINE.search(out)


# ------------------------------------------------------ checkpoints, resume


def _checkpoint(path):
    """``{key: numpy array}`` of every variable in a checkpoint."""
    return {
        k: np.asarray(js.load_variable(path, k)) for k, _ in js.list_variables(path)
    }


def _assert_same_checkpoint(a, b):
    a, b = _checkpoint(a), _checkpoint(b)
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
        assert a[key].tobytes() == b[key].tobytes(), key  # bit for bit


def _after_training(output):
    """What a run prints once trained: the loss summary and the sample."""
    text = output.split("mean loss:", 1)[1]
    return text.split("\ntotal ", 1)[0]


def _run(module, capsys, *args):
    assert module.main(["--smoke", "--ckpt-every", "4", *map(str, args)]) == 0
    return capsys.readouterr().out


@pytest.fixture(scope="module")
def straight_12(tmp_path_factory):
    """An uninterrupted run of 12 steps, in a process of its own."""
    ckpt = tmp_path_factory.mktemp("straight")
    out = run_script(
        CHAR_RNN, "--smoke", "--steps", 12, "--ckpt-every", 4, "--ckpt-dir", ckpt
    ).stdout
    return out, ckpt


def test_checkpoint_holds_params_optimizer_state_step_seed_and_losses(straight_12):
    out, ckpt = straight_12
    latest = js.latest_checkpoint(ckpt)
    assert latest is not None and latest.endswith("char_rnn-12")
    assert re.findall(r"^saved .*(char_rnn-\d+)$", out, re.MULTILINE) == [
        "char_rnn-4",
        "char_rnn-8",
        "char_rnn-12",
    ]
    shapes = dict(js.list_variables(latest))
    for path in ("embedding", "rnn/lstm_cell/kernel", "softmax/W"):
        # clip_by_global_norm, then Adam's first and second moments
        assert shapes[f"opt/1/0/mu/{path}"] == shapes[f"params/{path}"]
        assert shapes[f"opt/1/0/nu/{path}"] == shapes[f"params/{path}"]
    assert int(js.load_variable(latest, "opt/1/0/count")) == 12
    assert int(js.load_variable(latest, "meta/step")) == 12
    assert int(js.load_variable(latest, "meta/seed")) == 0
    losses = js.load_variable(latest, "meta/losses")
    printed = {int(s): float(loss) for s, _, loss in STEP_LINE.findall(out)}
    assert losses.shape == (12,) and sorted(printed) == list(range(1, 13))
    assert [round(float(x), 4) for x in losses] == [printed[s] for s in range(1, 13)]


def test_resumed_run_ends_bit_exactly_where_an_uninterrupted_one_does(
    straight_12, monkeypatch, capsys, tmp_path
):
    straight, straight_dir = straight_12
    module = _load_char_rnn(monkeypatch)
    first = _run(module, capsys, "--steps", 6, "--ckpt-dir", tmp_path)
    assert [s for s, _, _ in _losses(first)][-1] == 6
    resumed = _run(module, capsys, "--resume", "--steps", 12, "--ckpt-dir", tmp_path)
    assert re.search(r"^resumed from step 6 \(.*char_rnn-6\), seed 0$", resumed, re.M)
    assert [s for s, _, _ in _losses(resumed)][0] > 6  # no step trained twice
    _assert_same_checkpoint(
        js.latest_checkpoint(tmp_path), js.latest_checkpoint(straight_dir)
    )
    # The same losses (kept in the checkpoint), so the same summary and sample.
    assert _after_training(resumed) == _after_training(straight)


def test_resume_from_another_models_checkpoint_says_so(
    straight_12, monkeypatch, capsys
):
    _, straight_dir = straight_12
    module = _load_char_rnn(monkeypatch)
    args = ["--resume", "--steps", "20", "--ckpt-dir", str(straight_dir)]
    assert module.main(args) == 2  # the full model, not the --smoke one
    err = capsys.readouterr().err
    assert err.startswith(f"cannot resume from {straight_dir}{os.sep}char_rnn-12: ")
    assert "--smoke" in err and "rnn/lstm_cell/kernel" in err


# ------------------------------------------------------------------ Ctrl-C


def test_ctrl_c_stops_with_one_line_and_resume_continues(monkeypatch, capsys, tmp_path):
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "PYTHONIOENCODING": "utf-8",
        "PYTHONUNBUFFERED": "1",
    }
    args = ["--smoke", "--steps", "100000", "--ckpt-every", "3"]
    proc = subprocess.Popen(
        [sys.executable, str(CHAR_RNN), *args, "--ckpt-dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        env=env,
    )
    out, at, saved, notes = interrupt_when(
        proc, lambda line: line.startswith("saved "), str(tmp_path / "char_rnn"), "step"
    )
    assert not notes or saved == at  # the save at the interrupted step finished
    assert 3 <= saved <= at and saved % 3 == 0
    assert str(js.latest_checkpoint(tmp_path)).endswith(f"char_rnn-{saved}")
    # A "saved" line comes after its save, which a Ctrl-C lets finish.
    printed = [int(n) for n in re.findall(r"^saved .*char_rnn-(\d+)$", out, re.M)]
    assert printed[-1] in (saved - 3, saved), out

    # The resumed run continues from the checkpoint the line names.
    module = _load_char_rnn(monkeypatch)
    resumed = _run(
        module, capsys, "--resume", "--steps", saved + 2, "--ckpt-dir", tmp_path
    )
    assert f"resumed from step {saved} " in resumed
    assert [s for s, _, _ in STEP_LINE.findall(resumed)][-1] == str(saved + 2)
