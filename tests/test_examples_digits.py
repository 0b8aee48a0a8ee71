"""The digits CNN example trains, evaluates, checkpoints and resumes exactly."""

import ast
import importlib.util
import math
import os
import pathlib
import re
import subprocess
import sys

import pytest
from helpers import interrupt_when

import jscope as js

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"
# What js.Saver writes when Ctrl-C comes during a save, which it then finishes.
DIGITS = EXAMPLES / "digits_cnn.py"

EPOCH_LINE = re.compile(
    r"^epoch +(\d+)/(\d+)  loss ([0-9.]+)  train acc ([0-9.]+)%  "
    r"held-out acc ([0-9.]+)%",
    re.MULTILINE,
)
FINAL_LINE = re.compile(
    r"^held-out accuracy after epoch (\d+): ([0-9.]+)% \((\d+) images\)$",
    re.MULTILINE,
)
SUMMARY_ROW = re.compile(
    r"^(\S+) +(\([0-9, ]*\)) +(float32) +(params|state) +([0-9,]+) ", re.MULTILINE
)

# The architecture the example documents: conv2d(32, 3x3) on 1 channel,
# conv2d(64, 3x3), both SAME, one 2x2 max pool between them, dense(10).
C1, C2, CLASSES, K = 32, 64, 10, 3
FLAT = (8 // 2) * (8 // 2) * C2
EXPECTED_SHAPES = {
    ("params", "conv2d/kernel"): (K, K, 1, C1),
    ("params", "conv2d/bias"): (C1,),
    ("params", "batch_normalization/gamma"): (C1,),
    ("params", "batch_normalization/beta"): (C1,),
    ("params", "conv2d_1/kernel"): (K, K, C1, C2),
    ("params", "conv2d_1/bias"): (C2,),
    ("params", "batch_normalization_1/gamma"): (C2,),
    ("params", "batch_normalization_1/beta"): (C2,),
    ("params", "dense/kernel"): (FLAT, CLASSES),
    ("params", "dense/bias"): (CLASSES,),
    ("state", "batch_normalization/moving_mean"): (C1,),
    ("state", "batch_normalization/moving_variance"): (C1,),
    ("state", "batch_normalization_1/moving_mean"): (C2,),
    ("state", "batch_normalization_1/moving_variance"): (C2,),
}


def _start(*args):
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "PYTHONIOENCODING": "utf-8",
        "PYTHONUNBUFFERED": "1",
    }
    return subprocess.Popen(
        [sys.executable, str(DIGITS), "--smoke", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        env=env,
    )


def _finish(proc):
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, out + err
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three runs: 1 epoch then a resume to 2 (dir B); 4 epochs straight (dir A)."""
    straight_dir = tmp_path_factory.mktemp("straight")
    resumed_dir = tmp_path_factory.mktemp("resumed")
    straight = _start("--epochs", 4, "--ckpt-dir", straight_dir)
    first = _start("--ckpt-dir", resumed_dir)
    out = {"first": _finish(first)}
    out["resumed"] = _finish(
        _start("--resume", "--epochs", 2, "--ckpt-dir", resumed_dir)
    )
    out["straight"] = _finish(straight)
    out["straight_dir"], out["resumed_dir"] = straight_dir, resumed_dir
    return out


def _group(pattern, text):
    """The first group of ``pattern``'s first match in ``text``."""
    match = re.search(pattern, text)
    assert match, (pattern, text)
    return match.group(1)


def _epochs(output):
    return {
        int(e): (int(n), float(loss), float(train), float(test))
        for e, n, loss, train, test in EPOCH_LINE.findall(output)
    }


def test_smoke_prints_the_summary_table_first(runs):
    smoke = runs["first"]
    rows = {
        (c, p): (s, int(n.replace(",", "")))
        for p, s, _, c, n in SUMMARY_ROW.findall(smoke)
    }
    assert {k: ast.literal_eval(v[0]) for k, v in rows.items()} == EXPECTED_SHAPES
    for key, (_, count) in rows.items():
        assert count == math.prod(EXPECTED_SHAPES[key])
    total = sum(math.prod(s) for s in EXPECTED_SHAPES.values())
    assert re.search(rf"^total +{total:,} ", smoke, re.MULTILINE), smoke
    assert smoke.index("conv2d/kernel") < smoke.index("epoch   1/1")


def test_smoke_trains_one_epoch_and_reports_accuracy(runs):
    smoke = runs["first"]
    epochs = _epochs(smoke)
    assert list(epochs) == [1]
    total, loss, train, test = epochs[1]
    assert total == 1
    assert 0 < loss < 10 and 0 <= train <= 100 and 0 <= test <= 100
    final = FINAL_LINE.findall(smoke)
    assert len(final) == 1, smoke
    epoch, accuracy, images = final[0]
    assert int(epoch) == 1 and 0 <= float(accuracy) <= 100 and int(images) > 0
    assert float(accuracy) == test  # the same variables, evaluated twice


def test_resume_says_where_it_resumed_and_ends_at_epoch_2(runs):
    resumed = runs["resumed"]
    assert re.search(r"^resumed from epoch 1 \(.*digits_cnn-1\)$", resumed, re.M)
    assert list(_epochs(resumed)) == [2]
    assert _group(FINAL_LINE, resumed) == "2"


def test_resumed_epoch_equals_the_uninterrupted_one(runs):
    # Batches and dropout keys depend on (seed, epoch) only, so the resumed
    # epoch 2 matches the straight run's epoch 2 exactly, if and only if the
    # params, the batch-norm state and Adam's moments all came back.
    straight = _epochs(runs["straight"])
    assert _epochs(runs["first"])[1][1:] == straight[1][1:]
    assert _epochs(runs["resumed"])[2][1:] == straight[2][1:]


def test_checkpoint_holds_variables_optimizer_state_and_epoch(runs):
    latest = js.latest_checkpoint(runs["resumed_dir"])
    assert latest is not None and latest.endswith("digits_cnn-2")
    keys = dict(js.list_variables(latest))
    for (collection, path), shape in EXPECTED_SHAPES.items():
        assert keys[f"{collection}/{path}"] == shape
        if collection == "params":  # Adam's first and second moments
            assert keys[f"opt/0/mu/{path}"] == shape
            assert keys[f"opt/0/nu/{path}"] == shape
    assert keys["opt/0/count"] == ()
    assert int(js.load_variable(latest, "meta/epoch")) == 2
    assert int(js.load_variable(latest, "opt/0/count")) == _steps_per_epoch(runs) * 2


def _steps_per_epoch(runs):
    images = int(_group(r"digits: (\d+) training", runs["first"]))
    return images // 64  # the default batch; the last partial batch is dropped


def test_saver_keeps_the_three_newest_checkpoints(runs):
    directory = runs["straight_dir"]
    assert list(_epochs(runs["straight"])) == [1, 2, 3, 4]
    assert str(js.latest_checkpoint(directory)).endswith("digits_cnn-4")
    on_disk = sorted(p.name for p in directory.iterdir() if p.is_dir())
    assert on_disk == ["digits_cnn-2", "digits_cnn-3", "digits_cnn-4"]


def _load_example(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))  # for `import _cli`
    spec = importlib.util.spec_from_file_location("digits_cnn", DIGITS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "digits_cnn", module)
    spec.loader.exec_module(module)
    return module


def test_runs_without_rich_or_tqdm_and_resume_without_checkpoint_starts_fresh(
    monkeypatch, capsys, tmp_path
):
    module = _load_example(monkeypatch)
    for name in ("rich", "rich.progress", "tqdm"):
        monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError
    ckpt = tmp_path / "empty"
    assert module.main(["--smoke", "--resume", "--ckpt-dir", str(ckpt)]) == 0
    out = capsys.readouterr().out
    assert f"no checkpoint in {ckpt}; starting from scratch" in out
    assert list(_epochs(out)) == [1]
    assert "━" not in out  # no progress bar drawn
    assert str(js.latest_checkpoint(ckpt)).endswith("digits_cnn-1")


def test_optimizer_state_round_trips_through_a_checkpoint(monkeypatch, tmp_path):
    import jax
    import jax.numpy as jnp
    import optax

    module = _load_example(monkeypatch)
    params = {"a": {"w": jnp.ones((2, 3))}, "b": jnp.zeros(4)}
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2))
    state = opt.init(params)
    _, state = opt.update(jax.tree.map(jnp.ones_like, params), state, params)
    variables = {"params": params}
    path = js.Saver().save(
        module.checkpoint_tree(variables, state, 7), tmp_path / "digits_cnn"
    )
    assert path is not None
    assert {k for k, _ in js.list_variables(path) if k.startswith("opt/")} == {
        "opt/1/0/count",
        "opt/1/0/mu/a/w",
        "opt/1/0/mu/b",
        "opt/1/0/nu/a/w",
        "opt/1/0/nu/b",
    }
    fresh = jax.tree.map(jnp.zeros_like, variables)
    back, opt_state, epoch, _ = module.restore(tmp_path, fresh, opt.init(params))
    assert epoch == 7 and type(epoch) is int
    assert jax.tree.structure(opt_state) == jax.tree.structure(state)
    for got, want in zip(
        jax.tree.leaves(opt_state), jax.tree.leaves(state), strict=True
    ):
        assert jnp.array_equal(got, want)
    assert jnp.array_equal(back["params"]["a"]["w"], params["a"]["w"])


def test_ctrl_c_stops_with_one_line_and_resume_continues(monkeypatch, capsys, tmp_path):
    proc = _start("--epochs", 1000, "--ckpt-dir", tmp_path)
    out, at, saved, notes = interrupt_when(
        proc,
        lambda line: bool(EPOCH_LINE.match(line)),
        str(tmp_path / "digits_cnn"),
        "epoch",
    )
    assert not notes or saved == at  # the save at the interrupted epoch finished
    assert 1 <= saved <= at <= saved + 1  # Ctrl-C in a save lets it finish
    assert str(js.latest_checkpoint(tmp_path)).endswith(f"digits_cnn-{saved}")
    # The epoch's line comes after its save, which a Ctrl-C lets finish.
    assert list(_epochs(out))[-1] in (saved - 1, saved)

    module = _load_example(monkeypatch)
    args = ["--smoke", "--resume", "--epochs", str(saved + 1)]
    assert module.main([*args, "--ckpt-dir", str(tmp_path)]) == 0
    resumed = capsys.readouterr().out
    assert re.search(rf"^resumed from epoch {saved} \(", resumed, re.MULTILINE)
    assert list(_epochs(resumed)) == [saved + 1]
