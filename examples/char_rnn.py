"""A character-level language model: an LSTM over time with `js.scan`.

The LSTM cell is written the TF1 way, with `js.get_variable` under
`js.variable_scope`: one fused kernel ``[input + units, 4 * units]`` and one bias,
at the paths ``rnn/lstm_cell/kernel`` and ``rnn/lstm_cell/bias`` (TF1's
``tf.nn.rnn_cell.LSTMCell`` names, gates in its order ``i, j, f, o``, forget bias
1.0). `js.scan(lstm_cell)` runs the cell over time; with no ``variable_axes``
every collection is shared, so all time steps use the same weights, as TF1's
``tf.nn.dynamic_rnn`` did with variable reuse.

The text ships with Python itself, so nothing is downloaded: Python's licence
(``LICENSE.txt`` in the standard library's directory), or, where an install
lacks it, the docstrings of a few standard-library modules, or the Zen of Python.
The licence is short (about 14,000 characters), so in the default 400 steps an
LSTM of 128 units learns much of it by heart: the loss falls from a uniform
guess, log(76) = 4.33 nats per character, to about 0.45, and the sample reads
like the licence.

The model trains with optax's Adam in a jitted step, then writes some text of
its own, drawing each character with a key from `js.next_rng_key` inside another
`js.scan` (``split_rngs={"sample": True}`` gives every step its own key).

Every 100 steps and at the end, one `js.Saver` checkpoint holds everything
needed to go on: the params, optax's state, the step, the data's seed and the
loss of every step so far. The batches depend on the seed and the step number
only, so ``--resume`` continues exactly as an uninterrupted run would have:
same params, bit for bit. Ctrl-C stops with one line naming the step to resume
from.

Run it with:

    python examples/char_rnn.py              # about 20 s on 2 CPU cores
    python examples/char_rnn.py --resume --steps 800   # continue to step 800
    python examples/char_rnn.py --smoke      # a tiny model, 40 steps, seconds
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import importlib
import inspect
import io
import math
import os
import pathlib
import sys
import sysconfig
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass

import _cli
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jscope as js

DEFAULT_CKPT_DIR = os.path.join(tempfile.gettempdir(), "jscope_char_rnn")

# -------------------------------------------------------------------- the text

_DOC_MODULES = ("argparse", "collections", "functools", "itertools", "json", "re")


def load_text() -> tuple[str, str]:
    """Returns ``(text, where it came from)``, from files that ship with Python."""
    for path in (
        pathlib.Path(sysconfig.get_paths()["stdlib"]) / "LICENSE.txt",
        pathlib.Path(sys.base_prefix) / "LICENSE.txt",  # Windows installs
    ):
        if path.is_file():
            return path.read_text(encoding="utf-8", errors="replace"), str(path)
    docs = []
    for name in _DOC_MODULES:
        module = importlib.import_module(name)
        docs.append(inspect.getdoc(module) or "")
        for obj in vars(module).values():
            if getattr(obj, "__module__", None) == name:
                docs.append(inspect.getdoc(obj) or "")
    text = "\n\n".join(d for d in docs if d)
    if len(text) >= 5000:  # docstrings are gone under python -OO
        return text, "docstrings of " + ", ".join(_DOC_MODULES)
    with contextlib.redirect_stdout(io.StringIO()):  # `import this` prints the Zen
        import this
    return codecs.decode(this.s, "rot13"), "the Zen of Python"


# ------------------------------------------------------------------- the model


@dataclass(frozen=True)
class Config:
    vocab_size: int
    embed: int = 32
    units: int = 256


@dataclass(frozen=True)
class Sizes:
    """The sizes of a run: the model's and the training's."""

    embed: int
    units: int
    steps: int
    batch: int
    seq_len: int
    lr: float


# The default run, and --smoke's.
SIZES = Sizes(embed=32, units=128, steps=400, batch=32, seq_len=64, lr=1e-2)
SMOKE = Sizes(embed=16, units=64, steps=40, batch=16, seq_len=32, lr=1e-2)


def lstm_cell(state, x):
    """One step of TF1's LSTMCell: ``(c, h), x -> (c', h'), h'``."""
    c, h = state
    units = h.shape[-1]
    with js.variable_scope("lstm_cell"):
        kernel = js.get_variable("kernel", (x.shape[-1] + units, 4 * units))
        bias = js.get_variable("bias", (4 * units,), initializer=js.initializers.zeros)
    z = jnp.concatenate([x, h], axis=-1) @ kernel + bias
    i, j, f, o = jnp.split(z, 4, axis=-1)
    c = c * jax.nn.sigmoid(f + 1.0) + jax.nn.sigmoid(i) * jnp.tanh(j)
    h = jnp.tanh(c) * jax.nn.sigmoid(o)
    return (c, h), h


def embed(cfg: Config, ids):
    table = js.get_variable(
        "embedding",
        (cfg.vocab_size, cfg.embed),
        initializer=js.initializers.random_uniform(-0.1, 0.1),
    )
    return table[ids]


def logits_of(cfg: Config, h):
    with js.variable_scope("softmax"):
        W = js.get_variable("W", (cfg.units, cfg.vocab_size))
        b = js.get_variable("b", (cfg.vocab_size,), initializer=js.initializers.zeros)
    return h @ W + b


def zero_state(cfg: Config, batch: int):
    zeros = jnp.zeros((batch, cfg.units), jnp.float32)
    return zeros, zeros


def language_model(cfg: Config, ids):
    """Logits of the next character at every position of ``ids`` [batch, time]."""
    x = embed(cfg, ids)  # [batch, time, embed]
    with js.variable_scope("rnn"):
        # Scan over axis 1 (time); one set of LSTM weights for every step.
        rnn = js.scan(lstm_cell, in_axes=1, out_axes=1)
        _, hs = rnn(zero_state(cfg, ids.shape[0]), x)
    return logits_of(cfg, hs)


def sample(cfg: Config, prompt, length: int, temperature: float):
    """Reads ``prompt`` [batch, time], then writes ``length`` more characters."""
    x = embed(cfg, prompt[:, :-1])
    with js.variable_scope("rnn"):
        state, _ = js.scan(lstm_cell, in_axes=1)(zero_state(cfg, prompt.shape[0]), x)

    def write(carry, _):
        state, char = carry
        # The embedding and the cell are read a second time in this run, the
        # softmax a first time: TF1's AUTO_REUSE takes both.
        with js.variable_scope(js.get_variable_scope(), reuse=js.AUTO_REUSE):
            x = embed(cfg, char)
            with js.variable_scope("rnn"):
                state, h = lstm_cell(state, x)
            logits = logits_of(cfg, h) / temperature
        char = jax.random.categorical(js.next_rng_key("sample"), logits)
        return (state, char), char

    writer = js.scan(write, split_rngs={"sample": True}, length=length)
    _, chars = writer((state, prompt[:, -1]))
    return chars.T  # [batch, length]


# ---------------------------------------------------------------- training


def make_train_step(cfg: Config, opt: optax.GradientTransformation):
    def loss_fn(params, ids, targets):
        logits = js.apply(language_model, {"params": params}, cfg, ids)
        return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

    @jax.jit
    def train_step(params, opt_state, ids, targets):
        loss, grads = jax.value_and_grad(loss_fn)(params, ids, targets)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return train_step


def batch_at(data: np.ndarray, step: int, batch: int, seq_len: int, seed: int):
    """The ``(ids, targets)`` windows of a step, at random offsets in ``data``.

    They depend on ``(seed, step)`` only, so the stream's position is the step
    number: a resumed run reads what an uninterrupted one would have read.
    """
    rng = np.random.default_rng([seed, step])
    starts = rng.integers(0, len(data) - seq_len - 1, size=batch)
    window = np.stack([data[s : s + seq_len + 1] for s in starts])
    return window[:, :-1], window[:, 1:]


# ------------------------------------------------------------- checkpoints
#
# A `js.Saver` saves any pytree: the params, optax's state as it is (keyed by
# its pytree paths, "opt/1/0/mu/rnn/lstm_cell/kernel", ...), and under "meta"
# the step, the data stream's seed and the loss of every step so far.


def checkpoint_tree(params, opt_state, step: int, seed: int, losses) -> dict:
    meta = {"step": step, "seed": seed, "losses": np.asarray(losses, np.float32)}
    return {"params": params, "opt": opt_state, "meta": meta}


@dataclass
class Run:
    """A training run's state: where it is, and what it has seen."""

    params: dict
    opt_state: optax.OptState
    step: int  # the steps done
    seed: int
    losses: list[float]


def restore(ckpt_dir: str, run: Run) -> tuple[Run, str] | None:
    """The run saved in the latest checkpoint of ``ckpt_dir``, and its path.

    None if ``ckpt_dir`` holds none. ``run`` gives the structure to restore into.
    """
    path = js.latest_checkpoint(ckpt_dir)
    if path is None:
        return None
    shapes = dict(js.list_variables(path))
    losses = np.zeros(shapes["meta/losses"], np.float32)
    target = checkpoint_tree(run.params, run.opt_state, 0, 0, losses)
    tree = js.Saver().restore(path, target)
    meta = tree["meta"]
    losses = [float(x) for x in meta["losses"]]
    return Run(tree["params"], tree["opt"], meta["step"], meta["seed"], losses), path


def last_saved_step(ckpt_dir: str) -> int | None:
    """The step of the latest checkpoint in ``ckpt_dir``, or None."""
    path = js.latest_checkpoint(ckpt_dir)
    return None if path is None else int(js.load_variable(path, "meta/step"))


def train(
    run: Run, train_step, data, *, steps, batch, seq_len, saver, ckpt_dir, ckpt_every
):
    """Trains ``run`` to ``steps``; saves every ``ckpt_every`` steps and at the end.

    ``run`` is updated after every step, so that after a KeyboardInterrupt it
    says where training stopped.
    """
    log_every = max(1, steps // 10)
    save_path = os.path.join(ckpt_dir, "char_rnn")

    def save() -> None:
        tree = checkpoint_tree(
            run.params, run.opt_state, run.step, run.seed, run.losses
        )
        bar.write(f"saved {saver.save(tree, save_path, global_step=run.step)}")

    with _cli.progress(steps, completed=run.step) as bar:
        while run.step < steps:
            step = run.step + 1
            ids, targets = batch_at(data, step, batch, seq_len, run.seed)
            run.params, run.opt_state, loss = train_step(
                run.params, run.opt_state, ids, targets
            )
            run.losses.append(float(loss))
            run.step = step
            bar.update(step, loss=run.losses[-1])
            if step % log_every == 0 or step == 1:
                recent = run.losses[-log_every:]
                bar.write(
                    f"step {step:>5}/{steps}  loss {run.losses[-1]:.4f}  "
                    f"(mean of last {len(recent)}: {np.mean(recent):.4f})"
                )
            if step % ckpt_every == 0 or step == steps:
                save()


# -------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = _cli.parser(__doc__)
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"train to this step (default: {SIZES.steps}; {SMOKE.steps} with --smoke)",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="a tiny model and a few steps, in seconds"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the init, data and sample"
    )
    parser.add_argument(
        "--ckpt-dir", default=DEFAULT_CKPT_DIR, help="where checkpoints are saved"
    )
    parser.add_argument(
        "--ckpt-every", type=int, default=100, help="save a checkpoint every N steps"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the latest checkpoint in --ckpt-dir, with its seed",
    )
    args = parser.parse_args(argv)
    if args.ckpt_every < 1:
        parser.error(f"--ckpt-every must be at least 1, got {args.ckpt_every}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    text, source = load_text()
    chars = sorted(set(text))
    index = {ch: i for i, ch in enumerate(chars)}
    data = np.array([index[ch] for ch in text], dtype=np.int32)
    sizes = SMOKE if args.smoke else SIZES
    cfg = Config(vocab_size=len(chars), embed=sizes.embed, units=sizes.units)
    steps, batch, seq_len, lr = (
        args.steps or sizes.steps,
        sizes.batch,
        sizes.seq_len,
        sizes.lr,
    )
    print(f"text: {source}, {len(text)} characters, {len(chars)} distinct")

    key = jax.random.key(args.seed)
    example = jnp.zeros((1, 2), jnp.int32)
    summary = js.summary(language_model, key, cfg, example)
    if sys.stdout.isatty() and _cli.rich_available():
        summary.print_rich()  # a table on a terminal, plain text in logs
    else:
        print(summary)
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(lr))
    params = js.init(language_model, key, cfg, example)["params"]
    run = Run(params, opt.init(params), step=0, seed=args.seed, losses=[])
    if args.resume:
        try:
            restored = restore(args.ckpt_dir, run)
        except js.errors.CheckpointMismatchError as e:
            print(
                f"cannot resume from {js.latest_checkpoint(args.ckpt_dir)}: it holds "
                "a model of other sizes; rerun with the options it was saved with "
                f"(--smoke or not), or choose another --ckpt-dir.\n{e}",
                file=sys.stderr,
            )
            return 2
        if restored is None:
            print(f"no checkpoint in {args.ckpt_dir}; starting from scratch")
        else:
            run, path = restored
            print(f"resumed from step {run.step} ({path}), seed {run.seed}")

    with js.Saver(max_to_keep=3) as saver:
        try:
            train(
                run,
                make_train_step(cfg, opt),
                data,
                steps=steps,
                batch=batch,
                seq_len=seq_len,
                saver=saver,
                ckpt_dir=args.ckpt_dir,
                ckpt_every=args.ckpt_every,
            )
        except KeyboardInterrupt:
            last = last_saved_step(args.ckpt_dir)
            return _cli.interrupted(
                f"step {run.step}", None if last is None else f"step {last}"
            )
    print(f"checkpoints: {args.ckpt_dir}")
    report(run.losses, batch * seq_len, len(data), len(chars))

    prompt_text = text[:16]
    prompt = jnp.array([[index[ch] for ch in prompt_text]], jnp.int32)
    write = jax.jit(
        lambda params, prompt, key: js.apply(
            sample, {"params": params}, cfg, prompt, 400, 0.7, rngs={"sample": key}
        )
    )
    out = write(run.params, prompt, jax.random.key(run.seed + 1))
    written = "".join(chars[i] for i in np.asarray(out[0]))
    print(f"\nsample (temperature 0.7), after {prompt_text!r}:\n")
    print(prompt_text + written)
    print(f"\ntotal {time.perf_counter() - start:.1f} s")
    return 0


def report(losses: list[float], per_step: int, text_length: int, vocab: int) -> None:
    """Prints the mean loss of the first and of the last epoch."""
    if not losses:
        return
    # An epoch is as many steps as it takes to see the text's length in
    # characters (at least two epochs, so that first and last differ).
    steps = len(losses)
    per_epoch = max(1, min(text_length // per_step, steps // 2))
    epochs = [losses[i : i + per_epoch] for i in range(0, steps, per_epoch)]
    first, last = float(np.mean(epochs[0])), float(np.mean(epochs[-1]))
    print(
        f"mean loss: first epoch {first:.4f} -> last epoch {last:.4f} "
        f"({len(epochs)} epochs of {per_epoch} steps; uniform guess "
        f"{math.log(vocab):.4f})"
    )


if __name__ == "__main__":
    _cli.run(main)
