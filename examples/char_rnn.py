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
The licence is short (about 14,000 characters), so in the default 600 steps the
model learns much of it by heart: the loss falls from a uniform guess, log(76) =
4.33 nats per character, to about 0.4, and the sample reads like the licence.

The model trains with optax's Adam in a jitted step, then writes some text of
its own, drawing each character with a key from `js.next_rng_key` inside another
`js.scan` (``split_rngs={"sample": True}`` gives every step its own key).

Run it with:

    python examples/char_rnn.py              # about a minute on 2 CPU cores
    python examples/char_rnn.py --steps 2000
    python examples/char_rnn.py --smoke      # a few steps, seconds
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import importlib
import inspect
import io
import math
import pathlib
import sys
import sysconfig
import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jscope as js

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


def batches(data: np.ndarray, batch: int, seq_len: int, seed: int):
    """Endless ``(ids, targets)`` windows of ``data`` at random offsets."""
    rng = np.random.default_rng(seed)
    while True:
        starts = rng.integers(0, len(data) - seq_len - 1, size=batch)
        window = np.stack([data[s : s + seq_len + 1] for s in starts])
        yield window[:, :-1], window[:, 1:]


class _PlainProgress:
    """Plain-text stand-in for rich's progress bar."""

    def __init__(self, total: int):
        self.total = total

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, done: int, loss: float) -> None:
        del done, loss  # the loss lines printed by `train` say it all


class _RichProgress:
    def __init__(self, total: int):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self._progress = Progress(
            TextColumn("training"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.3f}"),
            TimeElapsedColumn(),
        )
        self._task = self._progress.add_task("train", total=total, loss=math.nan)

    def __enter__(self):
        self._progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self._progress.__exit__(*exc)

    def update(self, done: int, loss: float) -> None:
        self._progress.update(self._task, completed=done, loss=loss)


def progress_bar(total: int):
    """A progress bar showing the loss: rich's if installed, else plain lines."""
    try:
        importlib.import_module("rich.progress")
    except ImportError:
        return _PlainProgress(total)
    return _RichProgress(total)


def train(cfg, params, data, *, steps, batch, seq_len, lr, seed):
    """Trains ``params``; returns them and the loss of every step."""
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(lr))
    opt_state = opt.init(params)
    train_step = make_train_step(cfg, opt)
    stream = batches(data, batch, seq_len, seed)
    log_every = max(1, steps // 10)
    losses = []
    with progress_bar(steps) as bar:
        for step in range(1, steps + 1):
            ids, targets = next(stream)
            params, opt_state, loss = train_step(params, opt_state, ids, targets)
            losses.append(float(loss))
            bar.update(step, losses[-1])
            if step % log_every == 0 or step == 1:
                recent = losses[-log_every:]
                print(
                    f"step {step:>5}/{steps}  loss {losses[-1]:.4f}  "
                    f"(mean of last {len(recent)}: {np.mean(recent):.4f})"
                )
    return params, losses


# -------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=None, help="training steps")
    parser.add_argument(
        "--smoke", action="store_true", help="a tiny model, a few steps (seconds)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    text, source = load_text()
    chars = sorted(set(text))
    index = {ch: i for i, ch in enumerate(chars)}
    data = np.array([index[ch] for ch in text], dtype=np.int32)
    if args.smoke:
        cfg = Config(vocab_size=len(chars), embed=16, units=64)
        steps, batch, seq_len, lr = args.steps or 40, 16, 32, 1e-2
    else:
        cfg = Config(vocab_size=len(chars))
        steps, batch, seq_len, lr = args.steps or 600, 32, 64, 3e-3
    print(f"text: {source}, {len(text)} characters, {len(chars)} distinct")

    key = jax.random.key(args.seed)
    example = jnp.zeros((1, 2), jnp.int32)
    summary = js.summary(language_model, key, cfg, example)
    try:  # the same check as the progress bar's: rich or plain text
        import rich.progress  # noqa: F401

        summary.print_rich()
    except ImportError:
        print(summary)
    variables = js.init(language_model, key, cfg, example)

    params, losses = train(
        cfg,
        variables["params"],
        data,
        steps=steps,
        batch=batch,
        seq_len=seq_len,
        lr=lr,
        seed=args.seed,
    )
    # An epoch is as many steps as it takes to see len(text) characters (at
    # least two epochs, so that first and last differ).
    per_epoch = max(1, min(len(data) // (batch * seq_len), steps // 2))
    epochs = [losses[i : i + per_epoch] for i in range(0, steps, per_epoch)]
    first, last = float(np.mean(epochs[0])), float(np.mean(epochs[-1]))
    print(
        f"mean loss: first epoch {first:.4f} -> last epoch {last:.4f} "
        f"({len(epochs)} epochs of {per_epoch} steps; uniform guess "
        f"{math.log(len(chars)):.4f})"
    )

    prompt_text = text[:16]
    prompt = jnp.array([[index[ch] for ch in prompt_text]], jnp.int32)
    write = jax.jit(
        lambda params, prompt, key: js.apply(
            sample, {"params": params}, cfg, prompt, 400, 0.7, rngs={"sample": key}
        )
    )
    out = write(params, prompt, jax.random.key(args.seed + 1))
    written = "".join(chars[i] for i in np.asarray(out[0]))
    print(f"\nsample (temperature 0.7), after {prompt_text!r}:\n")
    print(prompt_text + written)
    print(f"\ntotal {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
