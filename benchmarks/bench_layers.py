"""Layers benchmark: the digits CNN's jitted train step in jscope, Flax and Haiku.

Every contestant builds the CNN of ``examples/digits_cnn.py`` on 8x8x1 images::

    conv2d(32, 3x3, SAME) -> batch_norm -> relu -> max_pool(2x2)
    conv2d(64, 3x3, SAME) -> batch_norm -> relu -> flatten -> dropout(0.3)
    -> dense(10)

and the same training step, jitted: softmax cross-entropy of the logits in
training mode (batch statistics, moving averages updated, dropout on),
``jax.value_and_grad``, ``optax.adam(1e-3)``, ``optax.apply_updates``; batch 64.

- ``jscope``: `js.layers` under ``js.apply(..., rngs={"dropout": key},
  mutable=["state"])``;
- ``flax linen``: ``nn.Conv``, ``nn.max_pool``, ``nn.Dropout``, ``nn.Dense`` and
  a batch norm written as a linen module (below), under
  ``apply(..., rngs={"dropout": key}, mutable=["batch_stats"])``;
- ``haiku``: ``hk.Conv2D``, ``hk.max_pool``, ``hk.Linear``, a batch norm written
  as an ``hk.Module`` with ``hk.get_state``/``hk.set_state``, and dropout on
  ``hk.next_rng_key()``, under ``hk.transform_with_state``;
- ``hand-written``: the same step in plain ``jax.numpy``/``lax`` over a dict.

The libraries' own batch norms compute the same function in another order of
operations, so their steps differ in flops and the comparison would time the
arithmetic, not the library: Flax's ``nn.BatchNorm`` folds ``gamma`` into the
``rsqrt`` (``(x - mean) * (rsqrt(var + eps) * gamma) + beta``) and by default
takes the variance as ``E[x^2] - E[x]^2``; Haiku's ``hk.BatchNorm`` does the
same and also zero-debiases its moving averages (an extra counter per average),
and ``hk.dropout`` multiplies by the mask where the others select. The four
contestants above therefore share jscope's arithmetic: ``(x - mean) *
rsqrt(var + eps)``, then ``* gamma + beta``; the variance as ``E[(x - mean)^2]``;
moving averages ``momentum * moving + (1 - momentum) * batch`` (momentum 0.9,
epsilon 1e-3 everywhere); dropout as ``select(keep, x / (1 - rate), 0)``. Each
library still draws the dropout key its own way. Two more contestants, for
information, use the stock layers (``nn.BatchNorm(momentum=0.9, epsilon=1e-3,
use_fast_variance=False)``; ``hk.BatchNorm(decay_rate=0.9, eps=1e-3)`` and
``hk.dropout``).

Checks, before any timing (a failure exits with code 1):

1. Flax's and Haiku's own inits make jscope's variables (shapes, by path;
   Haiku calls ``kernel`` and ``bias`` ``w`` and ``b``);
2. with dropout off and the same weights, every step gives the loss, the
   updated params and the updated moving averages of the hand-written step;
3. the compiled steps' flops (``compiled.cost_analysis()``) and HLO instruction
   counts: jscope's equal the hand-written step's exactly; Flax's and Haiku's
   differ from jscope's by less than one elementwise op over the logits (640
   values), which leaves room only for how each draws its dropout key.

Then the steps are timed side by side, interleaved round by round (in a new
random order every round); each reports its median over rounds. The ratio of a
contestant to the fastest of the four (the lowest median) is the median over
rounds of the ratio of the two steps' times in the same round, so that load from
other processes, which changes from round to round, cancels out. Target: jscope
within 1.02x of the fastest.

Last, ``js.summary`` of a 1,000-variable model (500 dense layers) is timed,
building the table and formatting it as text.

Usage::

    python benchmarks/bench_layers.py           # full run (about a minute)
    python benchmarks/bench_layers.py --quick   # smoke run (seconds)

Missed timing targets are reported as FAIL in the table but do not change the
exit code.
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

os.environ["JAX_PLATFORMS"] = "cpu"  # the benchmarks are defined on CPU

import flax  # noqa: E402
import flax.linen as nn  # noqa: E402
import haiku as hk  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from bench_core import (  # noqa: E402
    CheckFailed,
    Report,
    check,
    flops,
    hlo_instruction_count,
    path_hash,
)
from jax import lax  # noqa: E402

import jscope as js  # noqa: E402

BATCH = 64
C1, C2, CLASSES = 32, 64, 10
RATE = 0.3
MOMENTUM = 0.9
EPSILON = 1e-3  # jscope's batch_norm default (Keras's)
LR = 1e-3
LOGITS = BATCH * CLASSES  # the smallest activation of the step
SUMMARY_LAYERS = 500  # 1,000 variables

JSCOPE = "jscope"
FLAX = "flax linen"
HAIKU = "haiku"
HAND = "hand-written"
FLAX_STOCK = "flax linen (stock BatchNorm)"
HAIKU_STOCK = "haiku (stock BatchNorm, hk.dropout)"
MATCHED = (JSCOPE, FLAX, HAIKU, HAND)
STOCK = (FLAX_STOCK, HAIKU_STOCK)


# -------------------------------------------------------------------- jscope


def js_cnn(x, training: bool, rate: float = RATE):
    # fused=False: the biased batch variance in the moving average, as the others
    # (jscope's default for 4-D inputs is TF1's fused kernel, the unbiased one).
    bn = functools.partial(
        js.layers.batch_norm, momentum=MOMENTUM, epsilon=EPSILON, fused=False
    )
    h = js.layers.conv2d(x, C1, 3, padding="SAME")
    h = bn(h, training=training)
    h = js.layers.max_pool(jax.nn.relu(h), 2)
    h = js.layers.conv2d(h, C2, 3, padding="SAME")
    h = bn(h, training=training)
    h = js.layers.flatten(jax.nn.relu(h))
    h = js.layers.dropout(h, rate, training=training)
    return js.layers.dense(h, CLASSES)


# -------------------------------------------------------- shared arithmetic


def _batch_stats(x):
    mean = jnp.mean(x, (0, 1, 2), keepdims=True)
    var = jnp.mean(jnp.square(x - mean), (0, 1, 2), keepdims=True)
    return mean, var


def _moving(moving, stat):
    return MOMENTUM * moving + (1.0 - MOMENTUM) * stat.reshape(moving.shape)


def _normalize(x, mean, var, gamma, beta):
    c = (1, 1, 1, x.shape[-1])
    y = (x - mean) * lax.rsqrt(var + EPSILON)
    return y * gamma.reshape(c) + beta.reshape(c)


def _dropout(key, x, rate):
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return lax.select(keep, x / np.asarray(1.0 - rate, x.dtype), jnp.zeros_like(x))


# ---------------------------------------------------------------- flax linen


class FlaxBatchNorm(nn.Module):
    """jscope's batch norm as a linen module (params and ``batch_stats``)."""

    @nn.compact
    def __call__(self, x, training: bool):
        c = (x.shape[-1],)
        gamma = self.param("gamma", nn.initializers.ones, c)
        beta = self.param("beta", nn.initializers.zeros, c)
        mm = self.variable("batch_stats", "moving_mean", jnp.zeros, c)
        mv = self.variable("batch_stats", "moving_variance", jnp.ones, c)
        if training:
            mean, var = _batch_stats(x)
            if not self.is_initializing():
                mm.value = _moving(mm.value, mean)
                mv.value = _moving(mv.value, var)
        else:
            mean, var = mm.value.reshape(1, 1, 1, -1), mv.value.reshape(1, 1, 1, -1)
        return _normalize(x, mean, var, gamma, beta)


class FlaxCNN(nn.Module):
    rate: float = RATE
    stock: bool = False

    def _norm(self, h, training, name):
        if self.stock:
            return nn.BatchNorm(
                use_running_average=not training,
                momentum=MOMENTUM,
                epsilon=EPSILON,
                use_fast_variance=False,
                name=name,
            )(h)
        return FlaxBatchNorm(name=name)(h, training)

    @nn.compact
    def __call__(self, x, training: bool):
        h = nn.Conv(C1, (3, 3), padding="SAME", name="conv2d")(x)
        h = nn.relu(self._norm(h, training, "batch_normalization"))
        h = nn.max_pool(h, (2, 2), (2, 2))
        h = nn.Conv(C2, (3, 3), padding="SAME", name="conv2d_1")(h)
        h = nn.relu(self._norm(h, training, "batch_normalization_1"))
        h = h.reshape(h.shape[0], -1)
        h = nn.Dropout(self.rate, deterministic=not training)(h)
        return nn.Dense(CLASSES, name="dense")(h)


# --------------------------------------------------------------------- haiku


class HaikuBatchNorm(hk.Module):
    """jscope's batch norm as a Haiku module (params and state)."""

    def __call__(self, x, training: bool):
        c = (x.shape[-1],)
        gamma = hk.get_parameter("gamma", c, init=jnp.ones)
        beta = hk.get_parameter("beta", c, init=jnp.zeros)
        mm = hk.get_state("moving_mean", c, init=jnp.zeros)
        mv = hk.get_state("moving_variance", c, init=jnp.ones)
        if training:
            mean, var = _batch_stats(x)
            hk.set_state("moving_mean", _moving(mm, mean))
            hk.set_state("moving_variance", _moving(mv, var))
        else:
            mean, var = mm.reshape(1, 1, 1, -1), mv.reshape(1, 1, 1, -1)
        return _normalize(x, mean, var, gamma, beta)


def haiku_cnn(x, training: bool, rate: float = RATE, stock: bool = False):
    def norm(h, name):
        if stock:
            bn = hk.BatchNorm(True, True, MOMENTUM, eps=EPSILON, name=name)
            return bn(h, training)
        return HaikuBatchNorm(name=name)(h, training)

    h = hk.Conv2D(C1, 3, padding="SAME", name="conv2d")(x)
    h = jax.nn.relu(norm(h, "batch_normalization"))
    h = hk.max_pool(h, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    h = hk.Conv2D(C2, 3, padding="SAME", name="conv2d_1")(h)
    h = jax.nn.relu(norm(h, "batch_normalization_1"))
    h = h.reshape(h.shape[0], -1)
    if training and rate > 0:
        if stock:
            h = hk.dropout(hk.next_rng_key(), rate, h)
        else:
            h = _dropout(hk.next_rng_key(), h, rate)
    return hk.Linear(CLASSES, name="dense")(h)


def to_haiku(tree: dict) -> dict:
    """jscope's params (or state) with Haiku's names: ``kernel``/``bias`` -> w/b."""
    names = {"kernel": "w", "bias": "b"}
    return {
        scope: {names.get(k, k): v for k, v in leaves.items()}
        for scope, leaves in tree.items()
    }


# -------------------------------------------------------------- hand-written


def _conv(p, x):
    y = lax.conv_general_dilated(
        x, p["kernel"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return y + p["bias"]


def _hand_norm(p, s, x):
    mean, var = _batch_stats(x)
    new = {
        "moving_mean": _moving(s["moving_mean"], mean),
        "moving_variance": _moving(s["moving_variance"], var),
    }
    return _normalize(x, mean, var, p["gamma"], p["beta"]), new


def hand_cnn(params, state, x, key, rate: float = RATE):
    """The training-mode forward pass: ``(logits, new_state)``."""
    h = _conv(params["conv2d"], x)
    h, s1 = _hand_norm(params["batch_normalization"], state["batch_normalization"], h)
    h = lax.reduce_window(
        jax.nn.relu(h), -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID"
    )
    h = _conv(params["conv2d_1"], h)
    bn1 = "batch_normalization_1"
    h, s2 = _hand_norm(params[bn1], state[bn1], h)
    h = jax.nn.relu(h).reshape(h.shape[0], -1)
    if rate > 0:
        # One fold_in of a hash of the layer's path, as jscope draws the key.
        h = _dropout(jax.random.fold_in(key, path_hash("dropout")), h, rate)
    d = params["dense"]
    logits = h @ d["kernel"] + d["bias"]
    return logits, {"batch_normalization": s1, bn1: s2}


# ------------------------------------------------------------- contestants


Forward = Callable[[Any, Any, jax.Array, jax.Array], tuple[jax.Array, Any]]


def forwards(rate: float) -> dict[str, Forward]:
    """``(params, state, x, key) -> (logits, new_state)`` in training mode."""
    flax_m, flax_stock = FlaxCNN(rate), FlaxCNN(rate, stock=True)
    hk_m = hk.transform_with_state(lambda x: haiku_cnn(x, True, rate))
    hk_stock = hk.transform_with_state(lambda x: haiku_cnn(x, True, rate, True))

    def jscope_fwd(p, s, x, key):
        logits, new = js.apply(
            js_cnn,
            {"params": p, "state": s},
            x,
            True,
            rate,
            rngs={"dropout": key},
            mutable=["state"],
        )
        return logits, new["state"]

    def flax_fwd(module):
        def fwd(p, s, x, key):
            logits, new = module.apply(
                {"params": p, "batch_stats": s},
                x,
                True,
                rngs={"dropout": key},
                mutable=["batch_stats"],
            )
            return logits, new["batch_stats"]

        return fwd

    def haiku_fwd(model):
        return lambda p, s, x, key: model.apply(p, s, key, x)

    return {
        JSCOPE: jscope_fwd,
        FLAX: flax_fwd(flax_m),
        HAIKU: haiku_fwd(hk_m),
        HAND: lambda p, s, x, key: hand_cnn(p, s, x, key, rate),
        FLAX_STOCK: flax_fwd(flax_stock),
        HAIKU_STOCK: haiku_fwd(hk_stock),
    }


def own_inits(x: jax.Array) -> dict[str, tuple[Any, Any]]:
    """Each library's own ``(params, state)`` from its own init."""
    key = jax.random.key(0)
    out = {}
    v = js.init(js_cnn, key, x, False)
    out[JSCOPE] = v["params"], v["state"]
    out[HAND] = out[JSCOPE]  # a dict is all it has
    for name, module in ((FLAX, FlaxCNN()), (FLAX_STOCK, FlaxCNN(stock=True))):
        v = module.init({"params": key}, x, False)
        out[name] = v["params"], v["batch_stats"]
    for name, stock in ((HAIKU, False), (HAIKU_STOCK, True)):
        model = hk.transform_with_state(lambda x, s=stock: haiku_cnn(x, True, 0, s))
        out[name] = model.init(key, x)
    return out


def same_weights(variables: dict) -> dict[str, tuple[Any, Any]]:
    """jscope's initial variables, in each matched contestant's structure."""
    p, s = variables["params"], variables["state"]
    return {JSCOPE: (p, s), FLAX: (p, s), HAIKU: (to_haiku(p), s), HAND: (p, s)}


def make_step(forward: Forward, opt: optax.GradientTransformation) -> Callable:
    def step(params, state, opt_state, x, y, key):
        def loss_fn(p):
            logits, new_state = forward(p, state, x, key)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
            return loss.mean(), new_state

        (loss, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), state, opt_state, loss

    return step


# -------------------------------------------------------------------- checks


def _shapes(tree) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in js.flatten(tree).items()}


def check_variables(x: jax.Array) -> None:
    """Flax's and Haiku's own inits make jscope's variables (Haiku: w/b names)."""
    inits = own_inits(x)
    p, s = inits[JSCOPE]
    expected = {FLAX: (p, s), HAIKU: (to_haiku(p), s)}
    for name, (want_p, want_s) in expected.items():
        got_p, got_s = inits[name]
        for what, got, want in (("params", got_p, want_p), ("state", got_s, want_s)):
            check(
                _shapes(got) == _shapes(want),
                f"{name}: {what} {_shapes(got)} differ from jscope's {_shapes(want)}",
            )
    count = len(js.flatten(p)) + len(js.flatten(s))
    print(f"  flax, haiku and jscope make the same {count} variables")


def check_numerics(variables: dict, x, y) -> None:
    """Dropout off, same weights: every matched step gives the hand-written result."""
    opt = optax.adam(LR)
    fwd = forwards(rate=0.0)
    key = jax.random.key(3)
    results = {}
    for name, (p, s) in same_weights(variables).items():
        out = jax.jit(make_step(fwd[name], opt))(p, s, opt.init(p), x, y, key)
        params = out[0] if name != HAIKU else _from_haiku(out[0])
        results[name] = (out[3], params, out[1])
    want = jax.tree.leaves(results[HAND])
    for name, got in results.items():
        got = jax.tree.leaves(got)
        ok = len(got) == len(want) and all(
            np.allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
            for a, b in zip(got, want, strict=True)
        )
        check(ok, f"{name}: loss, params or state differ from the hand-written step")
    print(f"  loss {float(results[HAND][0]):.6f}, updated params and moving averages")
    print("  agree with the hand-written step for every contestant (dropout off)")


def _from_haiku(tree: dict) -> dict:
    names = {"w": "kernel", "b": "bias"}
    return {s: {names.get(k, k): v for k, v in d.items()} for s, d in tree.items()}


# ------------------------------------------------------------------- timing


def time_calls(fn: Callable[[], object], reps: int) -> float:
    """Seconds per call of ``fn`` over ``reps`` calls."""
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps


def interleaved(
    fns: dict[str, Callable[[], object]], rounds: int, reps: int
) -> dict[str, list[float]]:
    """Seconds per call of each fn, one sample per round.

    Every round runs every fn ``reps`` times in a row, in a new random order
    (seeded), so that no fn always follows the same other one. The garbage
    collector is run once before and paused throughout (as `timeit` does).
    """
    names = list(fns)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for fn in fns.values():  # warm-up, untimed
        fn()
    order = random.Random(0)
    gc.collect()
    gc.disable()
    try:
        for _ in range(rounds):
            order.shuffle(names)
            for name in names:
                samples[name].append(time_calls(fns[name], reps))
    finally:
        gc.enable()
    return samples


def paired_ratio(a: list[float], b: list[float]) -> float:
    """The median over rounds of ``a / b`` timed in the same round.

    Each ratio compares two timings taken a few milliseconds apart, so load from
    other processes that changes from round to round cancels out.
    """
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def bench_train_step(report: Report, rounds: int, reps: int) -> None:
    print(
        f"\n[1] train_step: digits CNN, jitted adam step, batch {BATCH}, "
        f"dropout {RATE}, batch norm momentum {MOMENTUM}, epsilon {EPSILON}"
    )
    x = jax.random.uniform(jax.random.key(1), (BATCH, 8, 8, 1))
    y = jax.random.randint(jax.random.key(2), (BATCH,), 0, CLASSES)
    key = jax.random.key(3)
    check_variables(x)
    variables = js.init(js_cnn, jax.random.key(0), x, False)
    check_numerics(variables, x, y)

    opt = optax.adam(LR)
    fwd = forwards(RATE)
    weights = {**same_weights(variables), **own_inits(x)}
    weights = {name: weights[name] for name in (*MATCHED, *STOCK)}
    steps, args, stats = {}, {}, {}
    for name, (p, s) in weights.items():
        steps[name] = jax.jit(make_step(fwd[name], opt))
        args[name] = (p, s, opt.init(p), x, y, key)
        compiled = steps[name].lower(*args[name]).compile()
        stats[name] = flops(compiled), hlo_instruction_count(compiled.as_text())
        print(f"  {name:<36} flops {stats[name][0]:.0f}, HLO {stats[name][1]}")

    js_flops, js_count = stats[JSCOPE]
    check(js_flops > 0 and js_count > 0, "train_step: empty cost analysis or HLO")
    check(
        stats[HAND] == stats[JSCOPE],
        f"train_step: jscope's step compiles to flops/instructions {stats[JSCOPE]}, "
        f"the hand-written one to {stats[HAND]}",
    )
    for name in (FLAX, HAIKU):
        diff = stats[name][0] - js_flops
        check(
            abs(diff) < LOGITS,
            f"train_step: {name}'s step has {diff:+.0f} flops against jscope's; "
            "the contestants no longer compute the same step",
        )
    for name in (*MATCHED, *STOCK):
        f, n = stats[name]
        shown = f"{f:.0f} ({f - js_flops:+.0f}), {n} HLO instructions"
        report.rows.append(("train_step", f"flops {name}", shown, "", ""))
    report.rows.append(
        ("train_step", "HLO instructions jscope, hand-written",
         f"{js_count}, {stats[HAND][1]}", "equal", "PASS")
    )  # fmt: skip

    def run(name):
        step, a = steps[name], args[name]
        return lambda: jax.block_until_ready(step(*a))

    samples = interleaved({name: run(name) for name in steps}, rounds, reps)
    med = {name: statistics.median(t) for name, t in samples.items()}
    fastest = min(MATCHED, key=med.get)
    for name, t in med.items():
        report.value("train_step", name, f"{t * 1e6:.1f} us/step")
    for name in (*MATCHED, *STOCK):
        target = 1.02 if name == JSCOPE else None
        ratio = paired_ratio(samples[name], samples[fastest])
        report.ratio("train_step", f"{name}/fastest ({fastest})", ratio, target)


# ------------------------------------------------------------------ summary


def wide_model(x, layers: int = SUMMARY_LAYERS):
    for _ in range(layers):
        x = js.layers.dense(x, x.shape[-1], activation=jnp.tanh)
    return x


def bench_summary(report: Report, rounds: int) -> None:
    x = jnp.ones((1, 16))
    key = jax.random.key(0)
    summary = js.summary(wide_model, key, x)
    n = len(summary.rows)
    print(f"\n[2] summary: js.summary of {SUMMARY_LAYERS} dense layers ({n} variables)")
    check(n == 2 * SUMMARY_LAYERS, f"summary: {n} rows, not {2 * SUMMARY_LAYERS}")
    check(
        summary.total_count == SUMMARY_LAYERS * (16 * 16 + 16),
        f"summary: total {summary.total_count} params",
    )
    build, text = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        summary = js.summary(wide_model, key, x)
        t1 = time.perf_counter()
        str(summary)
        t2 = time.perf_counter()
        build.append(t1 - t0)
        text.append(t2 - t1)
    b, t = statistics.median(build), statistics.median(text)
    report.value("summary", f"js.summary, {n} variables", f"{b * 1e3:.1f} ms")
    report.value("summary", "str(summary)", f"{t * 1e3:.1f} ms")
    verdict = "PASS" if b + t <= 1.0 else "FAIL"
    report.rows.append(
        ("summary", "table built and printed", f"{(b + t) * 1e3:.1f} ms", "<= 1 s",
         verdict)
    )  # fmt: skip
    print(f"SUMMARY {n} variables = {(b + t) * 1e3:.1f} ms (target <= 1 s) {verdict}")


# ---------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: few rounds, seconds"
    )
    parser.add_argument(
        "--rounds", type=int, default=None, help="interleaved timing rounds"
    )
    args = parser.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 500)
    reps = 2 if args.quick else 5
    summary_rounds = 2 if args.quick else 7

    print(
        f"jax {jax.__version__} ({jax.default_backend()}), flax {flax.__version__}, "
        f"haiku {hk.__version__}, optax {optax.__version__}, jscope {js.__version__}, "
        f"python {platform.python_version()}, {os.cpu_count()} CPUs; "
        f"medians of {rounds} interleaved rounds"
    )
    start = time.perf_counter()
    report = Report()
    try:
        bench_train_step(report, rounds, reps)
        bench_summary(report, summary_rounds)
    except CheckFailed as e:
        print(f"\nCHECK FAILED: {e}", file=sys.stderr)
        return 1
    print("\n" + report.table())
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
