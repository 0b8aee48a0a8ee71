"""Port a TF1 model and its checkpoint: same names, same outputs, then train on.

``examples/data/make_port_tf1.py`` is a TF1 program as a tutorial wrote it:
``tf.get_variable`` under ``tf.variable_scope``, a hand-written batch norm that
updates its moving averages with ``tf.assign``, a training tower and an
evaluation tower sharing its variables with ``reuse=True``, Adam and
``tf.train.Saver``. It trained 300 steps on scikit-learn's digits with real
TensorFlow and left its checkpoint in ``examples/data/port_tf1/``, with the
logits TensorFlow computed on a fixed batch.

Below is the same model in jscope, line for line: ``tf.`` became ``js.`` or
``jnp.``, ``tf.assign`` became `js.assign`, the two towers became two calls of
one function. This script

1. builds the variable tree with `js.init` and fills it from the TF1 checkpoint
   with `js.tf1.restore` (no TensorFlow: the checkpoint is read with NumPy);
   Adam's slots and ``global_step`` in the checkpoint are simply not asked for;
2. checks the outputs against TF1's: the evaluation logits, the training-mode
   logits (batch statistics) and the moving averages after one update, each
   within 1e-5, and the held-out accuracy;
3. fine-tunes a few steps with optax;
4. saves the result back in TF1's format with `js.tf1.save_checkpoint` (with
   ``global_step``), and re-reads it: TF1 code can restore it with its Saver.

Run it with:

    python examples/port_tf1.py                 # 100 fine-tuning steps
    python examples/port_tf1.py --quick         # 10 steps, a few seconds
    python examples/port_tf1.py --out /tmp/run  # where the TF1 checkpoint goes
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence

import _cli
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jscope as js

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "port_tf1")
TOLERANCE = 1e-5

# ---------------------------------------------------------------------- data


def load_data(seed: int = 0):
    """``(x_train, y_train, x_test, y_test)`` split as the TF1 program split them."""
    from sklearn.datasets import load_digits  # noqa: PLC0415 (examples extra)

    pixels, target = load_digits(return_X_y=True)  # [1797, 64] in 0..16
    x = (np.reshape(pixels, (-1, 8, 8, 1)) / 16.0).astype(np.float32)
    y = np.asarray(target, np.int32)
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = len(x) // 5
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


# --------------------------------------------------------------------- model
# The TF1 model of data/make_port_tf1.py, ported: tf.variable_scope ->
# js.variable_scope, tf.get_variable -> js.get_variable, tf.assign -> js.assign,
# tf.nn -> jax.nn / jnp. `training` is a Python bool, as it was in the TF1 code.


def batch_norm(x, training, decay=0.9, epsilon=1e-3):
    with js.variable_scope("bn"):
        channels = x.shape[-1]
        zeros, ones = js.initializers.zeros(), js.initializers.ones()
        beta = js.get_variable("beta", [channels], initializer=zeros)
        gamma = js.get_variable("gamma", [channels], initializer=ones)
        moving_mean = js.get_variable(
            "moving_mean", [channels], initializer=zeros, trainable=False
        )
        moving_variance = js.get_variable(
            "moving_variance", [channels], initializer=ones, trainable=False
        )
        if training:  # tf.nn.moments, then the UPDATE_OPS as assignments
            mean, variance = jnp.mean(x, (0, 1, 2)), jnp.var(x, (0, 1, 2))
            js.assign(moving_mean, decay * moving_mean + (1 - decay) * mean)
            js.assign(moving_variance, decay * moving_variance + (1 - decay) * variance)
        else:
            mean, variance = moving_mean, moving_variance
        inv = jax.lax.rsqrt(variance + epsilon) * gamma  # tf.nn.batch_normalization
        return x * inv + (beta - mean * inv)


def conv_layer(x, filters, training, scope):
    with js.variable_scope(scope):
        w = js.get_variable(
            "weights",
            [3, 3, x.shape[-1], filters],
            initializer=js.initializers.truncated_normal_initializer(stddev=0.1),
        )
        h = jax.lax.conv_general_dilated(
            x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        h = jax.nn.relu(batch_norm(h, training))
        return js.layers.max_pool(h, 2, 2, padding="SAME")


def fc_layer(x, units, scope):
    with js.variable_scope(scope):
        w = js.get_variable(
            "weights",
            [x.shape[-1], units],
            initializer=js.initializers.truncated_normal_initializer(stddev=0.1),
        )
        b = js.get_variable(
            "biases", [units], initializer=js.initializers.constant_initializer(0.1)
        )
        return x @ w + b


def model(images, training):
    with js.variable_scope("model"):
        h = conv_layer(images, 16, training, "conv1")  # [n, 4, 4, 16]
        h = conv_layer(h, 32, training, "conv2")  # [n, 2, 2, 32]
        h = jnp.reshape(h, (-1, 2 * 2 * 32))
        h = jax.nn.relu(fc_layer(h, 64, "fc1"))
        return fc_layer(h, 10, "logits")


# ------------------------------------------------------------------- checks


def check(what: str, ours, theirs) -> float:
    """Prints and returns the largest difference from TF1's values."""
    diff = float(np.max(np.abs(np.asarray(ours) - np.asarray(theirs))))
    verdict = "ok" if diff <= TOLERANCE else "MISMATCH"
    print(f"   {what:<48} max |jscope - TF1| = {diff:.2e}  {verdict}")
    return diff


def compare_with_tf1(variables, tf1_out, x_test, y_test, run) -> bool:
    """Checks the ported model's outputs against those TF1 recorded."""
    held_out = np.asarray(model_eval(variables, x_test))  # TF1's batch: x_test[:32]
    diffs = [
        check("eval logits (moving averages)", held_out[:32], tf1_out["eval_logits"])
    ]
    logits, updated = model_train(variables, tf1_out["images"])
    diffs.append(
        check("train logits (batch statistics)", logits, tf1_out["train_logits"])
    )
    for path, value in js.flatten(updated["state"]).items():
        name = path.removeprefix("state/")
        diffs.append(
            check(f"{name} after one update", value, tf1_out[f"updated/{name}"])
        )
    correct = int(np.sum(held_out.argmax(-1) == y_test))
    print(
        f"   held-out accuracy: jscope {correct}/{len(y_test)}, "
        f"TF1 {run['held_out_correct']}/{run['held_out_total']}"
    )
    return max(diffs) <= TOLERANCE and correct == run["held_out_correct"]


@jax.jit
def model_eval(variables, images):
    """Logits with the moving averages (TF1's evaluation tower)."""
    return js.apply(model, variables, images, False)


@jax.jit
def model_train(variables, images):
    """Logits with the batch's statistics and the updated moving averages."""
    return js.apply(model, variables, images, True, mutable=["state"])


def accuracy(variables, x, y) -> int:
    return int(np.sum(np.asarray(model_eval(variables, x)).argmax(-1) == y))


# ---------------------------------------------------------------- fine-tune


class Interrupted(Exception):
    """Ctrl-C during fine-tuning ``step``."""

    def __init__(self, step: int):
        super().__init__(step)
        self.step = step


def fine_tune(variables, x, y, steps: int, seed: int = 0):
    opt = optax.adam(1e-3)
    opt_state = jax.jit(opt.init)(variables["params"])  # one compile, not one per leaf

    @jax.jit
    def train_step(variables, opt_state, images, labels):
        def loss_fn(params):
            logits, new = js.apply(
                model, {**variables, "params": params}, images, True, mutable=["state"]
            )
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
            return loss.mean(), new

        (loss, new), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            variables["params"]
        )
        updates, opt_state = opt.update(grads, opt_state, variables["params"])
        params = optax.apply_updates(variables["params"], updates)
        return {**new, "params": params}, opt_state, loss

    rng = np.random.default_rng(seed + 1)
    every = max(1, steps // 5)
    step = 0
    try:
        with _cli.progress(steps, label="fine-tuning") as bar:
            for step in range(1, steps + 1):
                batch = rng.choice(len(x), 64, replace=False)
                variables, opt_state, loss = train_step(
                    variables, opt_state, x[batch], y[batch]
                )
                bar.update(step, loss=float(loss))
                if step == 1 or step % every == 0 or step == steps:
                    bar.write(f"   step {step:3d}/{steps}  loss {float(loss):.4f}")
    except KeyboardInterrupt:
        raise Interrupted(step) from None
    return variables


# --------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = _cli.parser(__doc__)
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="fine-tuning steps (default: 100; 10 with --quick)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="10 fine-tuning steps, a few seconds"
    )
    parser.add_argument(
        "--out",
        default=os.path.join(tempfile.gettempdir(), "jscope_port_tf1"),
        help="directory for the TF1 checkpoint written at the end",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    steps = args.steps if args.steps is not None else (10 if args.quick else 100)

    with open(os.path.join(DATA, "tf1_run.json"), encoding="utf-8") as f:
        run = json.load(f)
    tf1_out = dict(np.load(os.path.join(DATA, "tf1_outputs.npz")))
    x_train, y_train, x_test, y_test = load_data()
    if not np.array_equal(tf1_out["images"], x_test[:32]):
        sys.exit("The held-out images differ from those TF1 was given.")

    print(f"1. TF1 checkpoint {DATA} (written by TensorFlow {run['tensorflow']})")
    names = [name for name, _, _ in js.tf1.list_variables(DATA)]
    slots = [n for n in names if n.endswith(("/Adam", "/Adam_1", "_power"))]
    print(f"   {len(names)} tensors, {len(slots)} of them Adam's (not restored)")
    # The tree's structure, shapes and dtypes, without running an initializer.
    shapes = jax.eval_shape(lambda: js.init(model, jax.random.key(0), x_test, False))
    variables = js.tf1.restore(DATA, shapes)  # TF1 name = path without collection
    for path, value in js.flatten(variables).items():
        print(f"   {path:<36} {str(value.shape):<14} {value.dtype}")
    step = int(js.tf1.load_variable(DATA, "global_step"))
    print(
        f"   restored {len(js.flatten(variables))} variables, TF1's global_step {step}"
    )

    print("2. Outputs against TF1's")
    same = compare_with_tf1(variables, tf1_out, x_test, y_test, run)
    print(f"   outputs match TF1: {same}")

    print(f"3. Fine-tuning {steps} steps with optax.adam")
    try:
        variables = fine_tune(variables, x_train, y_train, steps)
    except Interrupted as e:  # nothing is written before the end
        return _cli.interrupted(f"step {e.step}", None)
    correct = accuracy(variables, x_test, y_test)
    print(f"   held-out accuracy after fine-tuning: {correct}/{len(y_test)}")

    print("4. Saving in TF1's format")
    step += steps
    state = {**variables["state"], "global_step": np.int64(step)}
    prefix = js.tf1.save_checkpoint(
        {**variables, "state": state}, os.path.join(args.out, f"model.ckpt-{step}")
    )
    written = js.tf1.load_checkpoint(prefix)
    model_names = sorted(n for n in names if n not in slots)
    exact = all(
        np.array_equal(written[path.split("/", 1)[1]], value)
        for path, value in js.flatten(variables).items()
    )
    print(f"   wrote {prefix}")
    print(f"   re-read {len(written)} variables, bit-exact: {exact}")
    print(
        f"   names equal the TF1 checkpoint's, less Adam's: "
        f"{sorted(written) == model_names}"
    )
    print(f"   global_step = {int(written['global_step'])}")
    return 0 if same and exact else 1


if __name__ == "__main__":
    _cli.run(main)
