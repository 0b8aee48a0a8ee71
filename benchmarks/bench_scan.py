"""Compile time of a deep layer stack: `js.scan` against an unrolled loop and peers.

Every contestant builds the same model, a stack of ``depth`` dense blocks
``h = tanh(h @ W + b)`` with ``W`` [128, 128] (``lecun_normal``) and ``b`` [128]
(zeros), and the same training step: ``jax.value_and_grad`` of an MSE loss and a
plain SGD update. The contestants:

- ``js.scan``: one block under ``js.scan(block, variable_axes={"params": 0})``,
  its variables stacked along a new leading axis (one compiled loop body);
- ``unrolled``: a Python loop of the same jscope block under
  ``js.variable_scope(f"layer{i}")`` (one copy of the block per layer);
- ``flax nn.scan``: Flax linen's ``nn.scan`` over a block module;
- ``haiku layer_stack``: Haiku's ``hk.layer_stack`` over a block function;
- ``hand-written lax.scan``: ``jax.lax.scan`` over the block written in
  ``jax.numpy``, the stacked weights passed as its scanned inputs (``xs``): the
  floor every library's scan is measured against.

For depths 4, 16 and 64 the script measures the wall time of
``jax.jit(step).lower(params, x, y).compile()`` with a new ``step`` function every
time (so no trace or executable cache is hit), split into tracing + lowering and
XLA's compile (and the process CPU time of both), interleaved round by round
(every depth and contestant once per round), and reports medians, with the
number of instructions of each compiled step (and of the HLO before XLA's
optimizations). At depth 64 it sets the four scans side by side: ``js.scan``'s
compile time against Flax's, its instruction count against the hand-written
scan's. It then times
the jitted step of every contestant at depths 16 and 64 (16 only with
``--quick``).

Before timing it checks the numerics: with the same weights (the stacked arrays,
sliced per layer for the unrolled model) all five contestants give the loss and
the gradients of a plain ``jax.numpy`` loop over the layers.

Usage::

    python benchmarks/bench_scan.py           # full run (2-3 minutes)
    python benchmarks/bench_scan.py --quick   # smoke run (seconds)

The script exits non-zero when a correctness check fails. Missed timing targets
are reported as FAIL in the table but do not change the exit code.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
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
from bench_core import (  # noqa: E402
    CheckFailed,
    Report,
    check,
    hlo_instruction_count,
)
from jax import lax  # noqa: E402

import jscope as js  # noqa: E402

# Compile times are the subject: never read an executable from a disk cache.
jax.config.update("jax_enable_compilation_cache", False)

D = 128
BATCH = 32
DEPTHS = (4, 16, 64)
STEP_DEPTHS = (16, 64)  # the headline ratio is at 16
LR = 0.01
W_INIT = jax.nn.initializers.lecun_normal()
B_INIT = jax.nn.initializers.zeros
F32 = jnp.float32

JS_SCAN = "js.scan"
UNROLLED = "unrolled"
FLAX = "flax nn.scan"
HAIKU = "haiku layer_stack"
HAND = "hand-written lax.scan"
CONTESTANTS = (JS_SCAN, UNROLLED, FLAX, HAIKU, HAND)
SCANS = (JS_SCAN, FLAX, HAIKU, HAND)  # side by side at the deepest depth


# ------------------------------------------------------------------ the models


def _dense_tanh(h, W, b):
    return jnp.tanh(h @ W + b)


def js_block(h, _):
    W = js.get_variable("W", (D, D), initializer=W_INIT)
    b = js.get_variable("b", (D,), initializer=B_INIT)
    return _dense_tanh(h, W, b), None


def js_scan_model(x, depth):
    with js.variable_scope("stack"):
        stack = js.scan(
            js_block,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            length=depth,
        )
        return stack(x)[0]


def js_unrolled_model(x, depth):
    h = x
    for i in range(depth):
        with js.variable_scope(f"layer{i}"):
            h, _ = js_block(h, None)
    return h


class FlaxBlock(nn.Module):
    @nn.compact
    def __call__(self, h, _):
        W = self.param("W", W_INIT, (D, D), F32)
        b = self.param("b", B_INIT, (D,), F32)
        return _dense_tanh(h, W, b), None


class FlaxStack(nn.Module):
    depth: int

    @nn.compact
    def __call__(self, x):
        stack = nn.scan(
            FlaxBlock,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            length=self.depth,
        )
        return stack(name="stack")(x, None)[0]


def _haiku_w_init(shape, dtype):
    return W_INIT(hk.next_rng_key(), shape, dtype)


def _haiku_b_init(shape, dtype):
    return B_INIT(None, shape, dtype)


def haiku_block(h):
    W = hk.get_parameter("W", (D, D), F32, init=_haiku_w_init)
    b = hk.get_parameter("b", (D,), F32, init=_haiku_b_init)
    return _dense_tanh(h, W, b)


def haiku_model(x, depth):
    with hk.name_scope("stack"):
        return hk.layer_stack(depth)(haiku_block)(x)


def hand_init(key: jax.Array, depth: int) -> dict:
    """The hand-written model's params: one key per layer, stacked by `jax.vmap`."""
    W = jax.vmap(lambda k: W_INIT(k, (D, D), F32))(jax.random.split(key, depth))
    return {"stack": {"W": W, "b": jnp.zeros((depth, D), F32)}}


def hand_model(params: dict, x: jax.Array) -> jax.Array:
    """``jax.lax.scan`` over the block, the stacked weights as its ``xs``."""

    def body(h, Wb):
        return _dense_tanh(h, *Wb), None

    stack = params["stack"]
    return lax.scan(body, x, (stack["W"], stack["b"]))[0]


class Models:
    """Init and forward ``(params, x) -> h`` of each contestant at one depth."""

    def __init__(self, depth: int):
        self.depth = depth
        self.flax = FlaxStack(depth)
        self.haiku = hk.transform(lambda x: haiku_model(x, depth))
        self._stacked = None

    def init(self, name: str, key: jax.Array, x: jax.Array) -> dict:
        depth = self.depth
        if name == JS_SCAN:
            return js.init(lambda x: js_scan_model(x, depth), key, x)["params"]
        if name == UNROLLED:
            return js.init(lambda x: js_unrolled_model(x, depth), key, x)["params"]
        if name == FLAX:
            return self.flax.init(key, x)["params"]
        if name == HAND:
            return hand_init(key, depth)
        return self.haiku.init(key, x)

    def shapes(self, name: str, x: jax.Array) -> dict:
        """The params tree of ``init`` as `jax.ShapeDtypeStruct` leaves (no FLOPs)."""
        return jax.eval_shape(lambda k: self.init(name, k, x), jax.random.key(0))

    def stacked(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Real initial ``(W, b)`` of the ``js.scan`` model, stacked by layer."""
        if self._stacked is None:
            stack = self.init(JS_SCAN, jax.random.key(0), x)["stack"]
            self._stacked = stack["W"], stack["b"]
        return self._stacked

    def forward(self, name: str) -> Callable:
        """A new forward function (new closures all the way down) on every call."""
        depth = self.depth
        if name == JS_SCAN:
            return lambda p, x: js.apply(
                lambda x: js_scan_model(x, depth), {"params": p}, x
            )
        if name == UNROLLED:
            return lambda p, x: js.apply(
                lambda x: js_unrolled_model(x, depth), {"params": p}, x
            )
        if name == FLAX:
            return lambda p, x: self.flax.apply({"params": p}, x)
        if name == HAND:
            return lambda p, x: hand_model(p, x)
        return lambda p, x: self.haiku.apply(p, None, x)

    def from_stacked(self, name: str, W: jax.Array, b: jax.Array) -> dict:
        """The contestant's params tree holding stacked ``W`` [depth, D, D], ``b``."""
        if name in (JS_SCAN, FLAX, HAND):
            return {"stack": {"W": W, "b": b}}
        if name == UNROLLED:
            return {f"layer{i}": {"W": W[i], "b": b[i]} for i in range(self.depth)}
        (scope,) = self.shapes(HAIKU, jnp.zeros((1, D), F32))
        return {scope: {"W": W, "b": b}}


def make_step(forward: Callable) -> Callable:
    """A training step: MSE loss, `jax.value_and_grad`, plain SGD."""

    def step(params, x, y):
        def loss_fn(p):
            return jnp.mean((forward(p, x) - y) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        new = jax.tree.map(lambda p, g: p - LR * g, params, grads)
        return new, loss, grads

    return step


def plain_loss(W, b, x, y):
    """The loss written out in jax.numpy, independent of every contestant."""
    h = x
    for i in range(W.shape[0]):
        h = jnp.tanh(jnp.matmul(h, W[i]) + b[i])
    return jnp.mean((h - y) ** 2)


# -------------------------------------------------------------- the checks


def _stacked_grads(name: str, models: Models, grads: dict) -> tuple:
    """A contestant's gradients as stacked ``(dW, db)``."""
    if name == UNROLLED:
        layers = [grads[f"layer{i}"] for i in range(models.depth)]
        return (
            jnp.stack([g["W"] for g in layers]),
            jnp.stack([g["b"] for g in layers]),
        )
    (inner,) = grads.values()
    return inner["W"], inner["b"]


def check_numerics(models: Models, steps: dict, x: jax.Array, y: jax.Array) -> None:
    """Same weights, same loss and gradients, for every contestant.

    ``steps`` maps each contestant to its compiled training step at this depth.
    """
    depth = models.depth
    W, b = models.stacked(x)
    b = b + 0.01 * jax.random.normal(jax.random.key(3), b.shape, F32)  # not all 0
    check(W.shape == (depth, D, D) and b.shape == (depth, D), "bad stacked shapes")
    reference = jax.jit(jax.value_and_grad(plain_loss, (0, 1)))
    want_loss, (want_dW, want_db) = reference(W, b, x, y)
    losses = {}
    for name in CONTESTANTS:
        # The params trees each contestant's own init makes hold the same shapes.
        own = models.shapes(name, x)
        params = models.from_stacked(name, W, b)
        check(
            jax.tree.structure(own) == jax.tree.structure(params)
            and jax.tree.map(jnp.shape, own) == jax.tree.map(jnp.shape, params),
            f"depth {depth}: {name}'s init made {jax.tree.map(jnp.shape, own)}",
        )
        _, loss, grads = steps[name](params, x, y)
        dW, db = _stacked_grads(name, models, grads)
        check(
            np.allclose(loss, want_loss, rtol=1e-5, atol=1e-6),
            f"depth {depth}: {name}'s loss {loss} != jax.numpy's {want_loss}",
        )
        check(
            np.allclose(dW, want_dW, rtol=1e-4, atol=1e-6)
            and np.allclose(db, want_db, rtol=1e-4, atol=1e-6),
            f"depth {depth}: {name}'s gradients differ from jax.numpy's",
        )
        losses[name] = float(loss)
    diff = abs(losses[JS_SCAN] - losses[UNROLLED])
    print(
        f"  depth {depth:>2}: loss js.scan {losses[JS_SCAN]:.7f}, unrolled "
        f"{losses[UNROLLED]:.7f} (|diff| {diff:.1e}), flax {losses[FLAX]:.7f}, "
        f"haiku {losses[HAIKU]:.7f}, lax.scan {losses[HAND]:.7f}, "
        f"jax.numpy {float(want_loss):.7f}"
    )


# ------------------------------------------------------------ compile timing


def interleaved(
    fns: dict[str, Callable[[], object]], rounds: int, reps: int
) -> dict[str, list[float]]:
    """Seconds per call of each fn, every round, timed round by round (A B C, B C A).

    As `bench_core.interleaved`, but returns every round's sample, rotates the
    order from round to round, and runs the garbage collector once per round, not
    before every timed block: a full collection costs ~0.3 s once JAX has
    compiled a few hundred programs.
    """
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():  # warm-up, untimed
        fn()
    names = list(fns)
    for r in range(rounds):
        gc.collect()
        gc.disable()
        try:
            # Each round starts with the next contestant: the first block after a
            # collection runs on cold caches.
            for name in names[r % len(names) :] + names[: r % len(names)]:
                fn = fns[name]
                start = time.perf_counter()
                for _ in range(reps):
                    fn()
                samples[name].append((time.perf_counter() - start) / reps)
        finally:
            gc.enable()
    return samples


def compile_once(forward: Callable, params, x, y) -> tuple[float, float, float, Any]:
    """Compiles a brand-new jitted step.

    The garbage collector is paused while it runs (the caller collects).

    Returns:
      Wall seconds to trace and lower, wall seconds of XLA's compile, process
      CPU seconds of both (less sensitive to other load on a shared machine),
      and the compiled step.
    """
    step = jax.jit(make_step(forward))
    gc.disable()
    try:
        cpu = time.process_time()
        start = time.perf_counter()
        lowered = step.lower(params, x, y)
        mid = time.perf_counter()
        compiled = lowered.compile()
        end = time.perf_counter()
        cpu = time.process_time() - cpu
    finally:
        gc.enable()
    return mid - start, end - mid, cpu, compiled


def hlo_before_xla(forward: Callable, params, x, y) -> int:
    """Instructions of a new step's HLO as JAX hands it to XLA (not optimized)."""
    lowered = jax.jit(make_step(forward)).lower(params, x, y)
    return hlo_instruction_count(lowered.compiler_ir("hlo").as_hlo_text())


def compile_all(depths: tuple[int, ...], x, y) -> tuple[dict, dict, dict]:
    """Models, params shapes and a compiled step for every depth and contestant.

    This is also the untimed warm-up of `bench_compile`: the first compile of each
    kind pays one-time costs that later ones do not.
    """
    models = {depth: Models(depth) for depth in depths}
    params = {  # lowering needs only shapes and dtypes
        (depth, name): m.shapes(name, x)
        for depth, m in models.items()
        for name in CONTESTANTS
    }
    steps = {
        key: compile_once(models[key[0]].forward(key[1]), p, x, y)[-1]
        for key, p in params.items()
    }
    return models, params, steps


def bench_compile(
    report: Report, rounds: int, models: dict, params: dict, steps: dict, x, y
) -> list[tuple[str, ...]]:
    """Compile-time ratios into ``report``; returns the per-depth table rows."""
    depths = tuple(models)
    print(
        f"\n[1] compile: jax.jit(step).lower(...).compile(), d={D}, batch {BATCH}, "
        f"depths {', '.join(map(str, depths))}; {rounds} interleaved rounds"
    )
    hlo = {key: hlo_instruction_count(c.as_text()) for key, c in steps.items()}
    before = {
        (depth, name): hlo_before_xla(models[depth].forward(name), p, x, y)
        for (depth, name), p in params.items()
    }
    samples = {key: ([], [], []) for key in params}
    keys = list(params)
    for r in range(rounds):
        gc.collect()  # once per round: a full collection takes ~0.3 s here
        # Each round starts with the next contestant (the first compile after a
        # collection runs on cold caches).
        for depth, name in keys[r % len(keys) :] + keys[: r % len(keys)]:
            p = params[depth, name]
            times = compile_once(models[depth].forward(name), p, x, y)[:3]
            for sample, t in zip(samples[depth, name], times, strict=True):
                sample.append(t)

    total, cpu, lower = {}, {}, {}
    rows = []
    for (depth, name), (lowers, comps, cpus) in samples.items():
        totals = [a + b for a, b in zip(lowers, comps, strict=True)]
        total[depth, name] = statistics.median(totals)
        cpu[depth, name] = statistics.median(cpus)
        lower[depth, name] = statistics.median(lowers)
        ms = [statistics.median(lowers), statistics.median(comps)]
        ms += [total[depth, name], cpu[depth, name]]
        counts = (str(hlo[depth, name]), str(before[depth, name]))
        rows.append((str(depth), name, *(f"{t * 1e3:.0f}" for t in ms), *counts))
        print(
            f"  depth {depth:>2} {name:<21} trace+lower {rows[-1][2]:>5} ms, "
            f"XLA compile {rows[-1][3]:>5} ms, total {rows[-1][4]:>5} ms "
            f"(CPU {rows[-1][5]:>5} ms), {hlo[depth, name]} HLO instructions "
            f"({before[depth, name]} before XLA)"
        )

    lo, hi = min(depths), max(depths)
    for name in CONTESTANTS:
        growth = total[hi, name] / total[lo, name]
        target = 1.15 if name == JS_SCAN else None
        report.ratio("compile", f"{name} {hi}/{lo}", growth, target)
    for name in CONTESTANTS:
        report.ratio(
            "compile",
            f"{name} {hi}/{lo} (CPU time)",
            cpu[hi, name] / cpu[lo, name],
            None,
        )
    for name in (UNROLLED, FLAX, HAIKU, HAND):
        report.ratio(
            "compile",
            f"js.scan/{name} at {hi}",
            total[hi, JS_SCAN] / total[hi, name],
            1.0 if name == FLAX else None,
        )
    report.ratio(
        "compile",
        f"js.scan/{FLAX} at {hi} (CPU time)",
        cpu[hi, JS_SCAN] / cpu[hi, FLAX],
        None,
    )
    report.ratio(
        "compile",
        f"js.scan/{FLAX} at {hi} (trace+lower)",
        lower[hi, JS_SCAN] / lower[hi, FLAX],
        None,
    )
    for name in (FLAX, HAIKU, HAND):
        report.ratio(
            "hlo",
            f"js.scan/{name} at {hi}",
            hlo[hi, JS_SCAN] / hlo[hi, name],
            1.05 if name == HAND else None,
        )
    return rows


# --------------------------------------------------------------- step timing


def bench_step(
    report: Report, models: Models, steps: dict, rounds: int, reps: int, x, y
) -> None:
    depth = models.depth
    print(f"\n[2] step: the jitted training step at depth {depth}, {reps} per round")
    W, b = models.stacked(x)
    fns = {}
    for name in CONTESTANTS:
        params = models.from_stacked(name, W, b)
        fns[name] = lambda step=steps[name], params=params: jax.block_until_ready(
            step(params, x, y)
        )
    samples = interleaved(fns, rounds, reps)
    med = {name: statistics.median(s) for name, s in samples.items()}
    best = {name: min(s) for name, s in samples.items()}
    for name in CONTESTANTS:
        report.value(
            "step",
            f"{name} depth {depth}",
            f"{med[name] * 1e6:.1f} us/step (best round {best[name] * 1e6:.1f})",
        )
    report.ratio(
        "step",
        f"js.scan/unrolled depth {depth}",
        med[JS_SCAN] / med[UNROLLED],
        None,
        expect="info, ~1.0 expected",
    )
    # The best round of each is the least disturbed by other load on the machine.
    report.ratio(
        "step",
        f"js.scan/unrolled depth {depth} (best rounds)",
        best[JS_SCAN] / best[UNROLLED],
        None,
    )
    for name in (FLAX, HAIKU, HAND):
        report.ratio(
            "step", f"js.scan/{name} depth {depth}", med[JS_SCAN] / med[name], None
        )


# ------------------------------------------------------------------ profiling


def _profile(name: str, depth: int = 64, calls: int = 10) -> None:
    models = Models(depth)
    x = jnp.ones((BATCH, D), F32)
    params = models.shapes(name, x)
    for _ in range(calls):
        compile_once(models.forward(name), params, x, x)


# ---------------------------------------------------------------------- main


def _table(rows: list[tuple[str, ...]]) -> str:
    head = ("depth", "contestant", "trace+lower ms", "XLA compile ms", "total ms")
    head += ("CPU ms", "HLO instructions", "HLO before XLA")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _side_by_side(rows: list[tuple[str, ...]]) -> str:
    """The deepest depth's scans, side by side: compile times and HLO sizes."""
    deepest = str(max(DEPTHS))
    by_name = {row[1]: row for row in rows if row[0] == deepest}
    flax_total = float(by_name[FLAX][4])
    head = ("contestant", "trace+lower ms", "XLA compile ms", "total ms")
    head += ("CPU ms", "total / Flax's", "HLO instructions", "HLO before XLA")
    lines = [f"depth {deepest}:", "| " + " | ".join(head) + " |"]
    lines.append("|" + "---|" * len(head))
    for name in SCANS:
        row = by_name[name]
        ratio = f"{float(row[4]) / flax_total:.3f}x"
        lines.append("| " + " | ".join((name, *row[2:6], ratio, *row[6:])) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: one round, seconds"
    )
    parser.add_argument(
        "--rounds", type=int, default=None, help="interleaved compile rounds"
    )
    parser.add_argument(
        "--profile",
        choices=[JS_SCAN, UNROLLED],
        help="only compile that contestant's depth-64 step, ten times, for a "
        "profiler: python -m cProfile -s cumtime benchmarks/bench_scan.py "
        "--profile js.scan",
    )
    args = parser.parse_args(argv)
    if args.profile:
        _profile(args.profile)
        return 0
    rounds = args.rounds or (1 if args.quick else 15)
    step_rounds, reps = (3, 5) if args.quick else (40, 20)

    print(
        f"jax {jax.__version__} ({jax.default_backend()}), flax {flax.__version__}, "
        f"haiku {hk.__version__}, jscope {js.__version__}, "
        f"python {platform.python_version()}, {os.cpu_count()} CPUs"
    )
    start = time.perf_counter()
    x = jax.random.normal(jax.random.key(1), (BATCH, D), F32)
    y = jax.random.normal(jax.random.key(2), (BATCH, D), F32)
    report = Report()
    try:
        models, params, steps = compile_all(DEPTHS, x, y)
        by_depth = {
            depth: {name: steps[depth, name] for name in CONTESTANTS}
            for depth in DEPTHS
        }
        print("\n[0] numerics: one set of weights, every contestant")
        for depth in DEPTHS:
            check_numerics(models[depth], by_depth[depth], x, y)
        rows = bench_compile(report, rounds, models, params, steps, x, y)
        for depth in STEP_DEPTHS[:1] if args.quick else STEP_DEPTHS:
            bench_step(report, models[depth], by_depth[depth], step_rounds, reps, x, y)
    except CheckFailed as e:
        print(f"\nCHECK FAILED: {e}", file=sys.stderr)
        return 1
    print("\n" + _table(rows))
    print("\n" + _side_by_side(rows))
    print("\n" + report.table())
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
