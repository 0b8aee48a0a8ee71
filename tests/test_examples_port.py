"""The TF1 porting example matches TF1's outputs, fine-tunes and saves in TF1's format.

``examples/port_tf1.py`` restores the TF1 checkpoint that real TensorFlow wrote
(``examples/data/port_tf1/``, made by ``examples/data/make_port_tf1.py``), checks
its outputs against those TensorFlow recorded, fine-tunes and writes a TF1
checkpoint back. These tests run it and re-read what it wrote; they never
import TensorFlow.
"""

import ast
import importlib.util
import json
import math
import os
import pathlib
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from helpers import interrupt_before_any_save, run_script

import jscope as js

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"
PORT = EXAMPLES / "port_tf1.py"
DATA = EXAMPLES / "data" / "port_tf1"
RUN = json.loads((DATA / "tf1_run.json").read_text(encoding="utf-8"))
ADAM = ("/Adam", "/Adam_1", "beta1_power", "beta2_power")
MODEL_NAMES = sorted(n for n in RUN["variables"] if not n.endswith(ADAM))

CHECK_LINE = re.compile(
    r"^   (.+?) +max \|jscope - TF1\| = ([0-9.e+-]+)  (ok|MISMATCH)$", re.MULTILINE
)
STEP_LINE = re.compile(r"^   step +(\d+)/(\d+)  loss ([0-9.]+)$", re.MULTILINE)
QUICK_STEPS = 10


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("port_tf1")
    return run_script(PORT, "--quick", "--out", out, timeout=300).stdout, out


@pytest.fixture(scope="module")
def example():
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(EXAMPLES))  # the example imports _cli
        spec = importlib.util.spec_from_file_location("port_tf1", PORT)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------ the shipped data


def test_shipped_checkpoint_is_small_and_what_tf1_listed():
    files = sorted(p.name for p in DATA.iterdir())
    assert files == [
        "checkpoint",
        f"{RUN['checkpoint']}.data-00000-of-00001",
        f"{RUN['checkpoint']}.index",
        "tf1_outputs.npz",
        "tf1_run.json",
    ]
    assert sum(p.stat().st_size for p in DATA.iterdir()) < 1_000_000
    listed = [name for name, _, _ in js.tf1.list_variables(DATA)]
    assert listed == RUN["variables"]  # what tf.train.list_variables gave
    assert int(js.tf1.load_variable(DATA, "global_step")) == RUN["steps"]


def test_ported_model_has_tf1s_names(example):
    x = np.zeros((1, 8, 8, 1), np.float32)
    shapes = jax.eval_shape(lambda: js.init(example.model, jax.random.key(0), x, False))
    paths = sorted(p.split("/", 1)[1] for p in js.flatten(shapes))
    assert paths == [n for n in MODEL_NAMES if n != "global_step"]
    state = sorted(js.flatten(shapes["state"]))
    assert state == [p for p in state if p.endswith(("moving_mean", "moving_variance"))]
    assert len(state) == 4


# ------------------------------------------------------------- the quick run


def test_outputs_match_tf1_within_tolerance(quick):
    output, _ = quick
    checks = CHECK_LINE.findall(output)
    assert [what for what, _, _ in checks] == [
        "eval logits (moving averages)",
        "train logits (batch statistics)",
        "model/conv1/bn/moving_mean after one update",
        "model/conv1/bn/moving_variance after one update",
        "model/conv2/bn/moving_mean after one update",
        "model/conv2/bn/moving_variance after one update",
    ]
    for what, diff, verdict in checks:
        assert float(diff) <= 1e-5 and verdict == "ok", what
    total = RUN["held_out_total"]
    correct = RUN["held_out_correct"]
    assert f"held-out accuracy: jscope {correct}/{total}, TF1 {correct}/{total}" in (
        output
    )
    assert "outputs match TF1: True\n" in output


def test_restore_ignores_adam_slots_and_reports_them(quick):
    output, _ = quick
    slots = len(RUN["variables"]) - len(MODEL_NAMES)
    assert f"{len(RUN['variables'])} tensors, {slots} of them Adam's" in output
    assert f"restored {len(MODEL_NAMES) - 1} variables" in output
    assert f"TF1's global_step {RUN['steps']}" in output


def test_fine_tuning_shows_progress(quick):
    output, _ = quick
    steps = [(int(s), int(n), float(loss)) for s, n, loss in STEP_LINE.findall(output)]
    assert [n for _, n, _ in steps] == [QUICK_STEPS] * len(steps)
    assert len(steps) >= 3 and steps[-1][0] == QUICK_STEPS
    assert all(math.isfinite(loss) and loss < 1.0 for _, _, loss in steps)
    accuracy = re.search(r"after fine-tuning: (\d+)/(\d+)", output)
    assert accuracy is not None and int(accuracy[1]) / int(accuracy[2]) > 0.9


def test_saved_checkpoint_rereads_with_tf1_names(quick):
    output, out = quick
    step = RUN["steps"] + QUICK_STEPS
    prefix = os.path.join(out, f"model.ckpt-{step}")
    assert f"wrote {prefix}\n" in output
    assert "bit-exact: True" in output
    assert "names equal the TF1 checkpoint's, less Adam's: True" in output
    assert [name for name, _, _ in js.tf1.list_variables(prefix)] == MODEL_NAMES
    written = js.tf1.load_checkpoint(prefix)
    assert written["global_step"].dtype == np.int64
    assert int(written["global_step"]) == step
    original = js.tf1.load_checkpoint(DATA)
    for name in MODEL_NAMES:
        assert written[name].shape == original[name].shape, name
        assert written[name].dtype == original[name].dtype, name
    changed = [n for n in MODEL_NAMES if not np.array_equal(written[n], original[n])]
    assert "model/fc1/weights" in changed  # fine-tuning moved the weights


# ----------------------------------------------------- the checks can fail


def test_comparison_fails_on_a_perturbed_weight(example):
    tf1_out = dict(np.load(DATA / "tf1_outputs.npz"))
    x = tf1_out["images"]
    shapes = jax.eval_shape(lambda: js.init(example.model, jax.random.key(0), x, False))
    variables = js.tf1.restore(DATA, shapes)
    y = tf1_out["labels"]
    run = {
        **RUN,
        "held_out_correct": int(np.sum(tf1_out["eval_logits"].argmax(-1) == y)),
    }
    run["held_out_total"] = len(y)
    assert example.compare_with_tf1(variables, tf1_out, x, y, run)
    flat = js.flatten(variables)
    flat["params/model/logits/biases"] = flat["params/model/logits/biases"] + 1e-3
    assert not example.compare_with_tf1(js.unflatten(flat), tf1_out, x, y, run)


def test_run_record_matches_the_committed_script():
    script = (EXAMPLES / "data" / "make_port_tf1.py").read_text(encoding="utf-8")
    constants = {}
    for node in ast.parse(script).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Tuple):
            names = [t.id for t in node.targets[0].elts if isinstance(t, ast.Name)]
            constants.update(zip(names, ast.literal_eval(node.value), strict=True))
    assert constants["STEPS"] == RUN["steps"]
    assert constants["BATCH"] == RUN["batch"]
    assert constants["LR"] == RUN["learning_rate"]
    assert RUN["checkpoint"] == f"model.ckpt-{RUN['steps']}"
    assert RUN["tensorflow"].startswith("2.")  # tf.compat.v1, graph mode


def test_ctrl_c_while_fine_tuning_stops_with_one_line(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONIOENCODING": "utf-8"}
    proc = subprocess.Popen(
        [sys.executable, str(PORT), "--steps", "100000", "--out", str(tmp_path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    first_step = re.compile(r"^   step +1/100000  loss ")  # the loop is running
    out, at = interrupt_before_any_save(proc, first_step.match, "step")
    assert "3. Fine-tuning 100000 steps" in out
    assert 1 <= at < 100_000
    assert not any(tmp_path.iterdir())  # nothing written
