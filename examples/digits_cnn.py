"""A small CNN on scikit-learn's handwritten digits, with batch norm and dropout.

The model is written with `js.layers`, the TF1 ``tf.layers`` way::

    conv2d(32) -> batch_norm -> relu -> max_pool
    conv2d(64) -> batch_norm -> relu -> flatten -> dropout -> dense(10)

The digits are the 1,797 8x8 grayscale images that ship inside scikit-learn
(``sklearn.datasets.load_digits``, nothing is downloaded), split 80/20 into a
training set and a held-out set with a fixed seed.

The jitted training step runs ``js.apply(cnn, ..., rngs={"dropout": key},
mutable=["state"])``: dropout draws its mask from the "dropout" key, and batch
norm normalizes with the batch's statistics and returns its updated moving
averages in ``state``. Evaluation calls the model with ``training=False``:
no dropout, and batch norm uses the moving averages.

After every epoch, one `js.Saver` checkpoint holds everything needed to go on:
the variables (``params`` and ``state``), optax's Adam state and the epoch
number. ``--resume`` restores the latest one with `js.latest_checkpoint`. The
order of the batches and the dropout keys are derived from the seed and the
epoch number, so a resumed run continues exactly as an uninterrupted one.
Ctrl-C stops with one line naming the epoch ``--resume`` continues from.

Run it with:

    python examples/digits_cnn.py                  # 20 epochs, ~99 % held-out
    python examples/digits_cnn.py --epochs 5
    python examples/digits_cnn.py --resume --epochs 30   # continue to epoch 30
    python examples/digits_cnn.py --smoke          # 1 epoch on a subset, seconds
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import _cli
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jscope as js

DEFAULT_CKPT_DIR = os.path.join(tempfile.gettempdir(), "jscope_digits_cnn")

# ---------------------------------------------------------------------- data


def load_data(seed: int, smoke: bool):
    """``(x_train, y_train, x_test, y_test)``: images [n, 8, 8, 1] in [0, 1]."""
    from sklearn.datasets import load_digits  # noqa: PLC0415 (examples extra)

    pixels, labels = load_digits(return_X_y=True)  # images as rows of 64 pixels
    x = (np.asarray(pixels).reshape(-1, 8, 8, 1) / 16.0).astype(np.float32)
    y = np.asarray(labels).astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = len(x) // 5
    test, train = order[:n_test], order[n_test:]
    if smoke:
        train, test = train[:320], test[:160]
    return x[train], y[train], x[test], y[test]


# --------------------------------------------------------------------- model


def cnn(x, training: bool):
    """Logits [batch, 10] of images [batch, 8, 8, 1]."""
    h = js.layers.conv2d(x, 32, 3, padding="SAME")
    h = jax.nn.relu(js.layers.batch_norm(h, training=training, momentum=0.9))
    h = js.layers.max_pool(h, 2)
    h = js.layers.conv2d(h, 64, 3, padding="SAME")
    h = jax.nn.relu(js.layers.batch_norm(h, training=training, momentum=0.9))
    h = js.layers.flatten(h)
    h = js.layers.dropout(h, rate=0.3, training=training)
    return js.layers.dense(h, 10)


def make_steps(opt: optax.GradientTransformation):
    """The jitted training step and the jitted evaluation."""

    @jax.jit
    def train_step(variables, opt_state, x, y, key):
        def loss_fn(params):
            logits, updated = js.apply(
                cnn,
                {**variables, "params": params},
                x,
                True,
                rngs={"dropout": key},
                mutable=["state"],
            )
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return loss, (updated["state"], logits)

        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, (state, logits)), grads = grad_fn(variables["params"])
        updates, opt_state = opt.update(grads, opt_state, variables["params"])
        params = optax.apply_updates(variables["params"], updates)
        correct = jnp.sum(jnp.argmax(logits, -1) == y)
        return {**variables, "params": params, "state": state}, opt_state, loss, correct

    @jax.jit
    def count_correct(variables, x, y):
        logits = js.apply(cnn, variables, x, False)
        return jnp.sum(jnp.argmax(logits, -1) == y)

    return train_step, count_correct


# --------------------------------------------------------------- checkpoints
#
# A `js.Saver` saves any pytree: the variables, optax's state as it is (keyed
# by its pytree paths, "opt/0/mu/conv2d/kernel", "opt/0/count", ...) and the
# epoch as a Python int. Restoring into a tree of the same structure gives back
# optax's NamedTuples and an int.


def checkpoint_tree(variables, opt_state, epoch: int) -> dict[str, Any]:
    return {**variables, "opt": opt_state, "meta": {"epoch": epoch}}


def restore(ckpt_dir: str, variables, opt_state):
    """``(variables, opt_state, epoch, path)`` from the latest checkpoint, or None."""
    path = js.latest_checkpoint(ckpt_dir)
    if path is None:
        return None
    tree = js.Saver().restore(path, checkpoint_tree(variables, opt_state, 0))
    opt, epoch = tree.pop("opt"), tree.pop("meta")["epoch"]
    return tree, opt, epoch, path


# ------------------------------------------------------------------ training


def accuracy(count_correct, variables, x, y, batch: int = 512) -> float:
    correct = sum(
        int(count_correct(variables, x[i : i + batch], y[i : i + batch]))
        for i in range(0, len(x), batch)
    )
    return correct / len(x)


class Interrupted(Exception):
    """Ctrl-C during ``epoch``."""

    def __init__(self, epoch: int):
        super().__init__(epoch)
        self.epoch = epoch


def train(
    variables, opt_state, train_step, count_correct, data, *, args, first, epochs, saver
):
    """Trains epochs ``first..epochs``, saving after each; returns the last trained.

    Returns ``(variables, opt_state, last epoch)``; raises `Interrupted` on Ctrl-C.
    """
    x_train, y_train, x_test, y_test = data
    steps = len(x_train) // args.batch  # the last partial batch is dropped
    last = first - 1  # the last epoch trained
    formats = {"loss": "loss {:.4f}", "held_out": "held-out {:.2%}"}
    epoch = first
    try:
        with _cli.progress(
            epochs, completed=last, label="epochs", formats=formats
        ) as bar:
            for epoch in range(first, epochs + 1):
                t0 = time.perf_counter()
                # Batches and dropout keys depend on (seed, epoch) only: a
                # resumed run sees what an uninterrupted one would have seen.
                order = np.random.default_rng([args.seed, epoch]).permutation(
                    len(x_train)
                )
                epoch_key = jax.random.fold_in(jax.random.key(args.seed + 1), epoch)
                losses, correct = [], 0
                for i in range(steps):
                    idx = order[i * args.batch : (i + 1) * args.batch]
                    variables, opt_state, loss, right = train_step(
                        variables,
                        opt_state,
                        x_train[idx],
                        y_train[idx],
                        jax.random.fold_in(epoch_key, i),
                    )
                    losses.append(loss)
                    correct += right
                loss = float(np.mean(jax.device_get(losses)))
                train_acc = int(correct) / (steps * args.batch)
                test_acc = accuracy(count_correct, variables, x_test, y_test)
                path = saver.save(
                    checkpoint_tree(variables, opt_state, epoch),
                    os.path.join(args.ckpt_dir, "digits_cnn"),
                    global_step=epoch,
                )
                bar.update(epoch, loss=loss, held_out=test_acc)
                last = epoch
                bar.write(
                    f"epoch {epoch:>3}/{epochs}  loss {loss:.6f}  train acc "
                    f"{train_acc:.2%}  held-out acc {test_acc:.2%}  "
                    f"({time.perf_counter() - t0:.1f} s, saved "
                    f"{os.path.basename(path)})"
                )
    except KeyboardInterrupt:
        raise Interrupted(epoch) from None
    return variables, opt_state, last


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = _cli.parser(__doc__)
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="train to this epoch (default: 20; 1 with --smoke)",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="1 epoch on a small subset, in seconds"
    )
    parser.add_argument(
        "--ckpt-dir", default=DEFAULT_CKPT_DIR, help="where checkpoints are saved"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the latest checkpoint in --ckpt-dir",
    )
    parser.add_argument("--batch", type=int, default=64, help="images per step")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the split, init and batches"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    epochs = args.epochs if args.epochs is not None else (1 if args.smoke else 20)

    start = time.perf_counter()
    x_train, y_train, x_test, y_test = load_data(args.seed, args.smoke)
    print(
        f"digits: {len(x_train)} training and {len(x_test)} held-out images, "
        f"{x_train.shape[1]}x{x_train.shape[2]}"
    )
    key = jax.random.key(args.seed)
    print(js.summary(cnn, key, x_train[:1], False))

    variables = js.init(cnn, key, x_train[:1], False)
    opt = optax.adam(args.lr)
    opt_state = opt.init(variables["params"])
    train_step, count_correct = make_steps(opt)
    saver = js.Saver(max_to_keep=3)

    first = 1
    if args.resume:
        restored = restore(args.ckpt_dir, variables, opt_state)
        if restored is None:
            print(f"no checkpoint in {args.ckpt_dir}; starting from scratch")
        else:
            variables, opt_state, done, path = restored
            first = done + 1
            print(f"resumed from epoch {done} ({path})")

    with saver:
        try:
            variables, opt_state, last = train(
                variables,
                opt_state,
                train_step,
                count_correct,
                (x_train, y_train, x_test, y_test),
                args=args,
                first=first,
                epochs=epochs,
                saver=saver,
            )
        except Interrupted as e:
            path = js.latest_checkpoint(args.ckpt_dir)
            done = None if path is None else int(js.load_variable(path, "meta/epoch"))
            return _cli.interrupted(
                f"epoch {e.epoch}", None if done is None else f"epoch {done}"
            )

    test_acc = accuracy(count_correct, variables, x_test, y_test)
    print(
        f"held-out accuracy after epoch {last}: {test_acc:.2%} ({len(x_test)} images)"
    )
    print(f"checkpoints: {args.ckpt_dir}")
    print(f"total {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    _cli.run(main)
