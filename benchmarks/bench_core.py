"""Core benchmarks: jscope against Haiku, Flax core and hand-written JAX.

Every contestant builds the same model: ``n`` dense layers, layer ``i`` holding
``W`` [d, d] (``jax.nn.initializers.lecun_normal()``) and ``b`` [d] (zeros) under
the path ``layer{i}/W``, ``layer{i}/b``, with relu between layers. Contestants
run side by side in one process, interleaved round by round, the order rotating
each round (A B C D, B C D A, ...); each reports the median over rounds.

1. ``init_trace``: ``jax.eval_shape`` of init (shape only, traced afresh each call),
   in microseconds per variable.
2. ``apply_eager``: un-jitted apply of a 10-layer MLP on real CPU arrays, in
   wall time and in the calling thread's CPU time (the Python side: dispatch
   and bookkeeping, not XLA's worker threads), as medians of per-round ratios
   over many short rounds, beside an A/A control (hand-written JAX timed again
   as a contestant of its own), Equinox (the MLP as a module holding the
   arrays) and a floor for any scoped API (`FloorScopes`: a scope joins a
   prefix, a read takes the array from a flat dict and checks its shape, no
   rules). A full run measures in five fresh processes,
   one after another, and reports the median over them of every figure and
   each process's main ratio (``--processes``); ``--quick`` in this one.
3. ``jit_step``: a jitted optax Adam step; jscope and hand-written JAX must compile
   to the same HLO (flops and instruction count), then are timed.
4. ``get_variable``: the per-call overhead of `js.get_variable` at apply on a
   200-variable model of 2x2 arrays, against hand-written dict reads, in the
   thread's CPU time.
5. ``get_variable_call``: what one `js.get_variable` call costs at apply, timed
   inside the run around 200 calls in one variable scope (no scope entry, no
   `js.apply` set-up), in the thread's CPU time, and as a ratio to the same
   loop of dict reads timed in the same run.

Usage::

    python benchmarks/bench_core.py           # full run (about a quarter of an hour)
    python benchmarks/bench_core.py --quick   # smoke run (seconds)

The script exits non-zero when a correctness check fails (contestants disagree on
outputs or parameter shapes, or the two jitted steps compile differently). Missed
timing targets are reported as FAIL in the table but do not change the exit code.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import zlib
from collections.abc import Callable

os.environ["JAX_PLATFORMS"] = "cpu"  # the benchmarks are defined on CPU

import flax  # noqa: E402
import flax.core  # noqa: E402
import haiku as hk  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import jscope as js  # noqa: E402

# Two initializer sets, each given as the same plain JAX initializer function to
# every contestant. "seed" is the tutorial's shared affine layer
# (tf.random_normal_initializer() for W, tf.constant_initializer(0.0) for b);
# "lecun" is a heavier, Flax/Haiku-style choice.
INIT_SETS = {
    "seed": (js.initializers.random_normal(), js.initializers.constant(0.0)),
    "lecun": (jax.nn.initializers.lecun_normal(), jax.nn.initializers.zeros),
}
LECUN, ZEROS = INIT_SETS["seed"]


def use_inits(name: str) -> None:
    """Selects the initializer set the models use."""
    global LECUN, ZEROS
    LECUN, ZEROS = INIT_SETS[name]


F32 = jnp.float32


class CheckFailed(Exception):
    """A correctness check of the benchmark failed."""


def check(ok: bool, message: str) -> None:
    if not ok:
        raise CheckFailed(message)


# ------------------------------------------------------------------ the models
#
# Every init also runs the forward pass, as jscope, Haiku and Flax inits do.


def _dense(h, W, b, last):
    h = h @ W + b
    return h if last else jax.nn.relu(h)


def jscope_model(x, n):
    h = x
    d = x.shape[-1]
    for i in range(n):
        with js.variable_scope(f"layer{i}"):
            W = js.get_variable("W", (d, d), initializer=LECUN)
            b = js.get_variable("b", (d,), initializer=ZEROS)
        h = _dense(h, W, b, i == n - 1)
    return h


def _haiku_lecun(shape, dtype):
    return LECUN(hk.next_rng_key(), shape, dtype)


def _haiku_zeros(shape, dtype):
    return ZEROS(None, shape, dtype)


def haiku_model(x, n):
    h = x
    d = x.shape[-1]
    for i in range(n):
        with hk.name_scope(f"layer{i}"):
            W = hk.get_parameter("W", (d, d), F32, init=_haiku_lecun)
            b = hk.get_parameter("b", (d,), F32, init=_haiku_zeros)
        h = _dense(h, W, b, i == n - 1)
    return h


def flax_model(scope, x, n):
    h = x
    d = x.shape[-1]
    for i in range(n):
        s = scope.push(f"layer{i}")
        W = s.param("W", LECUN, (d, d), F32)
        b = s.param("b", ZEROS, (d,), F32)
        h = _dense(h, W, b, i == n - 1)
    return h


class FloorScopes:
    """The least a ``with scope(name): get(name, shape)`` API can do at apply.

    Not a library: the floor that `apply_eager` reads jscope against. A scope
    joins its name to the current prefix; a read joins the path, takes the array
    from a flat dict, compares its shape and records the read. Nothing else: no
    reuse rules, no name scopes or open counts, no check of the JAX trace, no
    dtype, no errors worth the name. What jscope costs above this is the price
    of its rules; what this costs above hand-written JAX is the price of any
    scoped API between eager ops.
    """

    def __init__(self, n: int):
        self.n = n
        self.prefix = ""
        self.flat: dict[str, jax.Array] = {}
        self.read: dict[str, jax.Array] = {}

    def apply(self, params: dict, x: jax.Array) -> jax.Array:
        self.prefix, self.read = "", {}
        self.flat = {
            f"{layer}/{name}": array
            for layer, arrays in params.items()
            for name, array in arrays.items()
        }
        h = x
        d = x.shape[-1]
        for i in range(self.n):
            with _FloorScope(self, f"layer{i}"):
                W = self.get("W", (d, d))
                b = self.get("b", (d,))
            h = _dense(h, W, b, i == self.n - 1)
        return h

    def get(self, name: str, shape: tuple[int, ...]) -> jax.Array:
        prefix = self.prefix
        path = f"{prefix}/{name}" if prefix else name
        if path in self.read:
            raise ValueError(f"{path} read twice")
        value = self.flat[path]
        if value.shape != shape:
            raise ValueError(f"{path}: shape {value.shape}, not {shape}")
        self.read[path] = value
        return value


class _FloorScope:
    __slots__ = ("floor", "name", "saved")

    def __init__(self, floor: FloorScopes, name: str):
        self.floor, self.name = floor, name

    def __enter__(self) -> None:
        prefix = self.saved = self.floor.prefix
        self.floor.prefix = f"{prefix}/{self.name}" if prefix else self.name

    def __exit__(self, *exc_info: object) -> None:
        self.floor.prefix = self.saved


def equinox_mlp(params: dict, n: int):
    """The MLP as an Equinox module holding the given arrays (its own style:
    the arrays are the module's fields, read as attributes)."""
    import equinox as eqx

    class Dense(eqx.Module):
        W: jax.Array
        b: jax.Array
        last: bool = eqx.field(static=True)

        def __call__(self, h):
            return _dense(h, self.W, self.b, self.last)

    class MLP(eqx.Module):
        layers: tuple

        def __call__(self, x):
            h = x
            for layer in self.layers:
                h = layer(h)
            return h

    layers = [params[f"layer{i}"] for i in range(n)]
    return MLP(tuple(Dense(p["W"], p["b"], i == n - 1) for i, p in enumerate(layers)))


def path_hash(path: str) -> int:
    """A stable 31-bit hash of a variable path (crc32), for `jax.random.fold_in`."""
    return zlib.crc32(path.encode()) & 0x7FFFFFFF


def hand_init(key, x, n):
    h = x
    d = x.shape[-1]
    params = {}
    for i in range(n):
        W = LECUN(jax.random.fold_in(key, path_hash(f"layer{i}/W")), (d, d), F32)
        b = ZEROS(None, (d,), F32)  # zeros need no key
        params[f"layer{i}"] = {"W": W, "b": b}
        h = _dense(h, W, b, i == n - 1)
    return params


def hand_apply(params, x, n):
    h = x
    for i in range(n):
        layer = params[f"layer{i}"]
        h = _dense(h, layer["W"], layer["b"], i == n - 1)
    return h


class Contestants:
    """Init and apply of the four contestants for an ``n``-layer model.

    Every init returns the params as ``{"layer0": {"W": ..., "b": ...}, ...}``, so
    one params dict serves every apply (see `_apply_fns`).
    """

    def __init__(self, n: int):
        self.n = n
        self.hk = hk.transform(lambda x: haiku_model(x, n))
        self.flax_fn = lambda scope, x: flax_model(scope, x, n)
        self.flax_init = flax.core.init(self.flax_fn)
        self.flax_apply = flax.core.apply(self.flax_fn)

    def jscope_fn(self, x):
        return jscope_model(x, self.n)

    # init: key, x -> params dict {"layer{i}": {"W", "b"}}
    def inits(self) -> dict[str, Callable]:
        return {
            "jscope": lambda k, x: js.init(self.jscope_fn, k, x)["params"],
            "haiku": lambda k, x: self.hk.init(k, x),
            "flax core": lambda k, x: self.flax_init(k, x)[1]["params"],
            "hand-written": lambda k, x: hand_init(k, x, self.n),
        }


# ------------------------------------------------------------------- timing


def time_calls(
    fn: Callable[[], object], reps: int, clock: Callable[[], float] = time.perf_counter
) -> float:
    """Seconds per call of ``fn`` over ``reps`` calls, with gc paused.

    ``clock`` is wall time by default; `time.thread_time` gives the thread's
    CPU time, which waiting for a core on a loaded machine does not inflate.
    """
    gc.collect()
    gc.disable()
    try:
        start = clock()
        for _ in range(reps):
            fn()
        return (clock() - start) / reps
    finally:
        gc.enable()


def rotated(fns: dict[str, Callable[[], object]], r: int) -> list:
    """Round ``r``'s order: A B C D, then B C D A, ... so that no contestant
    always runs in the same place (which one follows which moves a timing by a
    few per cent: the same function measured 1.01x wall, 1.04x CPU in the first
    place against the last)."""
    items = list(fns.items())
    k = r % len(items)
    return items[k:] + items[:k]


def paired(samples: dict[str, list[float]], a: str, b: str) -> float:
    """The median over rounds of ``a``'s time over ``b``'s in the same round.

    Less moved than the ratio of the two medians when the machine's speed
    drifts between rounds.
    """
    return statistics.median(x / y for x, y in zip(samples[a], samples[b], strict=True))


def interleaved_samples(
    fns: dict[str, Callable[[], object]], rounds: int, reps: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall and thread CPU seconds per call of each fn, one sample per round.

    The CPU time is the calling thread's: the Python side of each call
    (dispatch, and jscope's bookkeeping), without XLA's worker threads, whose
    idle spinning the process's CPU time would count, and without the waits
    for a core that inflate wall time on a loaded machine.
    """
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():  # warm-up, untimed
        fn()
    for r in range(rounds):
        for name, fn in rotated(fns, r):
            gc.collect()
            gc.disable()
            try:
                c0, w0 = time.thread_time(), time.perf_counter()
                for _ in range(reps):
                    fn()
                w1, c1 = time.perf_counter(), time.thread_time()
            finally:
                gc.enable()
            wall[name].append((w1 - w0) / reps)
            cpu[name].append((c1 - c0) / reps)
    return wall, cpu


def interleaved(
    fns: dict[str, Callable[[], object]],
    rounds: int,
    reps: int,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, float]:
    """Median seconds per call of each fn, timed round by round (A B C, B C A)."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():  # warm-up, untimed
        fn()
    for r in range(rounds):
        for name, fn in rotated(fns, r):
            samples[name].append(time_calls(fn, reps, clock))
    return {name: statistics.median(s) for name, s in samples.items()}


class Report:
    """Collects result rows and ratio lines; prints a Markdown table at the end."""

    def __init__(self):
        self.rows: list[tuple[str, str, str, str, str]] = []

    def value(self, bench: str, contestant: str, value: str) -> None:
        self.rows.append((bench, contestant, value, "", ""))
        print(f"  {contestant:<28} {value}")

    def ratio(
        self,
        bench: str,
        label: str,
        ratio: float,
        target: float | None,
        expect: str = "info",
    ) -> None:
        """Records a ratio; with a ``target``, PASS when ``ratio <= target``."""
        verdict = ""
        shown_target = expect
        if target is not None:
            verdict = "PASS" if ratio <= target else "FAIL"
            shown_target = f"<= {target:.2f}"
        self.rows.append((bench, label, f"{ratio:.3f}x", shown_target, verdict))
        shown = f"target {shown_target}" if target is not None else shown_target
        print(f"RATIO {bench} {label} = {ratio:.3f} ({shown}) {verdict}".rstrip())

    def bound(
        self, bench: str, label: str, value: float, unit: str, target: float
    ) -> None:
        """Records a measured value; PASS when ``value <= target``."""
        verdict = "PASS" if value <= target else "FAIL"
        shown_target = f"<= {target:.2f} {unit}"
        self.rows.append((bench, label, f"{value:.2f} {unit}", shown_target, verdict))
        print(
            f"BOUND {bench} {label} = {value:.3f} {unit} (target {shown_target}) "
            f"{verdict}"
        )

    def table(self) -> str:
        head = ("benchmark", "contestant / ratio", "median", "target", "result")
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines)


# -------------------------------------------------------- 1. init trace cost


def bench_init_trace(
    report: Report, rounds: int, n: int, d: int, inits: str = "seed"
) -> None:
    use_inits(inits)
    bench = "init_trace" if inits == "seed" else f"init_trace ({inits})"
    print(
        f"\n[1] {bench}: jax.eval_shape of init, {n} layers ({2 * n} variables), "
        f"d={d}, {inits} initializers"
    )
    models = Contestants(n)
    key = jax.random.key(0)
    x = jnp.ones((8, d), F32)
    inits = models.inits()

    # Check: every contestant makes the same parameter shapes.
    want = jax.tree.map(lambda s: (s.shape, s.dtype), hand_init_shapes(n, d))
    for name, init in inits.items():
        got = jax.eval_shape(lambda k, init=init: init(k, x), key)
        got = jax.tree.map(lambda s: (s.shape, s.dtype), got)
        check(got == want, f"{bench}: {name} made params {got}, expected {want}")

    def fresh(init):
        # A new lambda per call: eval_shape caches traces by function identity.
        return lambda: jax.eval_shape(lambda k: init(k, x), key)

    med = interleaved({name: fresh(init) for name, init in inits.items()}, rounds, 1)
    per_var = {name: t / (2 * n) * 1e6 for name, t in med.items()}
    for name, us in per_var.items():
        report.value(bench, name, f"{us:.1f} us/variable")
    report.ratio(bench, "jscope/haiku", per_var["jscope"] / per_var["haiku"], 0.8)
    report.ratio(
        bench, "jscope/flax core", per_var["jscope"] / per_var["flax core"], 0.8
    )
    report.ratio(
        bench,
        "jscope/hand-written",
        per_var["jscope"] / per_var["hand-written"],
        None,
    )
    # Context: tracing the initializers themselves (hand-written JAX, no library)
    # is the floor; these show how far below Haiku and Flax core it lies and what
    # each library adds on top of it.
    for lib in ("haiku", "flax core"):
        report.ratio(
            bench,
            f"hand-written/{lib} (floor)",
            per_var["hand-written"] / per_var[lib],
            None,
        )
    for lib in ("jscope", "haiku", "flax core"):
        extra = per_var[lib] - per_var["hand-written"]
        report.value(bench, f"{lib} overhead", f"{extra:.1f} us/variable")


def hand_init_shapes(n: int, d: int) -> dict:
    layer = {
        "W": jax.ShapeDtypeStruct((d, d), F32),
        "b": jax.ShapeDtypeStruct((d,), F32),
    }
    return {f"layer{i}": dict(layer) for i in range(n)}


# ------------------------------------------------------- 2. un-jitted apply


def _apply_fns(models: Contestants, params: dict, x: jax.Array) -> dict:
    """Un-jitted apply of each contestant on the same arrays, blocking each call."""
    js_vars = {"params": params}
    flax_vars = {"params": params}
    n = models.n
    eqx_mlp = equinox_mlp(params, n)
    floor = FloorScopes(n)
    return {
        "jscope": lambda: js.apply(models.jscope_fn, js_vars, x).block_until_ready(),
        "haiku": lambda: models.hk.apply(params, None, x).block_until_ready(),
        "flax core": lambda: models.flax_apply(flax_vars, x).block_until_ready(),
        "equinox": lambda: eqx_mlp(x).block_until_ready(),
        FLOOR: lambda: floor.apply(params, x).block_until_ready(),
        "hand-written": lambda: hand_apply(params, x, n).block_until_ready(),
    }


FLOOR = "scoped reads, no rules"  # `FloorScopes`: the floor of a scoped API


AGAIN = "hand-written again"  # the A/A control's name in `bench_apply_eager`


# (label, numerator, denominator, clock, target) of every `apply_eager` ratio:
# medians over rounds of the paired ratio, except the ratio of the medians.
HAND = "hand-written"
APPLY_RATIOS = (
    ("jscope/hand-written", "jscope", HAND, "wall", 1.1),
    ("jscope/hand-written (thread CPU time)", "jscope", HAND, "cpu", 1.1),
    ("jscope/hand-written (ratio of the medians)", "jscope", HAND, "", None),
    (f"{AGAIN}/hand-written (A/A)", AGAIN, HAND, "wall", None),
    (f"{AGAIN}/hand-written (A/A, thread CPU time)", AGAIN, HAND, "cpu", None),
    ("haiku/hand-written", "haiku", HAND, "wall", None),
    ("flax core/hand-written", "flax core", HAND, "wall", None),
    ("equinox/hand-written", "equinox", HAND, "wall", None),
    (f"{FLOOR}/hand-written (floor)", FLOOR, HAND, "wall", None),
    (f"jscope/{FLOOR}", "jscope", FLOOR, "wall", None),
)
FLOOR_RATIO = APPLY_RATIOS[-2][0]


def measure_apply_eager(rounds: int, reps: int, n: int, d: int, batch: int) -> dict:
    """One process's `apply_eager`: ``{"us": {name: [wall, cpu]}, "ratios": {...}}``.

    Raises:
      CheckFailed: A contestant's output differs from the plain jax.numpy MLP.
    """
    models = Contestants(n)
    x = jax.random.normal(jax.random.key(1), (batch, d), F32)
    params = hand_init(jax.random.key(0), x, n)
    fns = _apply_fns(models, params, x)

    want = np.asarray(_plain_mlp(params, x, n))
    for name, fn in fns.items():
        got = np.asarray(fn())
        check(
            np.allclose(got, want, rtol=1e-5, atol=1e-5),
            f"apply_eager: {name}'s output differs from the plain jax.numpy MLP",
        )

    # The A/A control: hand-written JAX a second time, as a contestant of its
    # own. Its ratio to the first shows how far two runs of the same code land
    # apart in this process, the band the other ratios must be read in.
    fns[AGAIN] = fns["hand-written"]
    wall, cpu = interleaved_samples(fns, rounds, reps)
    us = {
        name: [statistics.median(wall[name]) * 1e6, statistics.median(cpu[name]) * 1e6]
        for name in fns
    }
    ratios = {}
    for label, a, b, clock, _ in APPLY_RATIOS:
        if clock == "wall":
            ratios[label] = paired(wall, a, b)
        elif clock == "cpu":
            ratios[label] = paired(cpu, a, b)
        else:
            ratios[label] = us[a][0] / us[b][0]
    return {"us": us, "ratios": ratios}


def bench_apply_eager(
    report: Report,
    rounds: int,
    reps: int,
    n: int,
    d: int,
    batch: int,
    processes: int = 1,
) -> None:
    """`measure_apply_eager` in ``processes`` fresh processes, one at a time.

    A process's figures move with more than the machine's load: the same code
    gave jscope/hand-written 1.05x in one process and 1.15x in the next, while
    the A/A control stayed within 2 % in each. So a full run measures in
    several processes and reports the median over them of every figure, with
    each process's main ratio; with one process it measures in this one.
    """
    print(
        f"\n[2] apply_eager: un-jitted apply, {n} layers, d={d}, batch {batch}, "
        f"{reps} calls per round, {rounds} rounds, {processes} process(es)"
    )
    if processes == 1:
        runs = [measure_apply_eager(rounds, reps, n, d, batch)]
    else:
        runs = []
        for i in range(processes):
            args = [sys.executable, __file__, "--apply-eager-child"]
            args += [str(v) for v in (rounds, reps, n, d, batch)]
            proc = subprocess.run(args, capture_output=True, text=True)
            if proc.returncode != 0:
                raise CheckFailed(
                    f"apply_eager process {i + 1} failed:\n{proc.stdout}{proc.stderr}"
                )
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            got = runs[-1]["ratios"]
            print(
                f"  process {i + 1}/{processes}: jscope/hand-written "
                f"{got[APPLY_RATIOS[0][0]]:.3f}, floor/hand-written "
                f"{got[FLOOR_RATIO]:.3f}"
            )
    for name in runs[0]["us"]:
        walls = [run["us"][name][0] for run in runs]
        cpus = [run["us"][name][1] for run in runs]
        report.value(
            "apply_eager",
            name,
            f"{statistics.median(walls):.1f} us/call "
            f"(thread CPU {statistics.median(cpus):.1f})",
        )
    for label, _, _, _, target in APPLY_RATIOS:
        values = [run["ratios"][label] for run in runs]
        report.ratio("apply_eager", label, statistics.median(values), target)
    if processes > 1:
        for label in (APPLY_RATIOS[0][0], FLOOR_RATIO):
            values = sorted(run["ratios"][label] for run in runs)
            report.value(
                "apply_eager",
                f"{label}, per process",
                ", ".join(f"{v:.3f}" for v in values),
            )


def _plain_mlp(params, x, n):
    """The MLP written out in jax.numpy, independent of the contestants' code."""
    h = x
    for i in range(n):
        h = jnp.matmul(h, params[f"layer{i}"]["W"]) + params[f"layer{i}"]["b"]
        if i < n - 1:
            h = jnp.maximum(h, 0.0)
    return h


# ---------------------------------------------------------- 3. jitted step


_INSTRUCTION = re.compile(r"^\s*(ROOT\s+)?%?[\w.\-]+ = ")


def hlo_instruction_count(hlo_text: str) -> int:
    """Counts instruction lines (``name = op(...)``) in an HLO module's text."""
    return sum(1 for line in hlo_text.splitlines() if _INSTRUCTION.match(line))


def flops(compiled) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):  # older jax: one dict per computation
        return float(sum(c.get("flops", 0.0) for c in cost))
    return float(cost.get("flops", 0.0))


def _make_step(forward: Callable, opt: optax.GradientTransformation) -> Callable:
    def step(params, opt_state, x, y):
        def loss_fn(p):
            return jnp.mean((forward(p, x) - y) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


def bench_jit_step(
    report: Report, rounds: int, reps: int, n: int, d: int, batch: int
) -> None:
    print(f"\n[3] jit_step: jitted optax adam step, {n} layers, d={d}, batch {batch}")
    models = Contestants(n)
    opt = optax.adam(1e-3)
    x = jax.random.normal(jax.random.key(1), (batch, d), F32)
    y = jax.random.normal(jax.random.key(2), (batch, d), F32)
    params = hand_init(jax.random.key(0), x, n)
    opt_state = opt.init(params)

    steps = {
        "jscope": jax.jit(
            _make_step(lambda p, x: js.apply(models.jscope_fn, {"params": p}, x), opt)
        ),
        "hand-written": jax.jit(_make_step(lambda p, x: hand_apply(p, x, n), opt)),
    }
    stats = {}
    for name, step in steps.items():
        compiled = step.lower(params, opt_state, x, y).compile()
        stats[name] = (flops(compiled), hlo_instruction_count(compiled.as_text()))
        print(
            f"  {name:<28} flops {stats[name][0]:.0f}, "
            f"HLO instructions {stats[name][1]}"
        )
    (js_flops, js_count), (hand_flops, hand_count) = (
        stats["jscope"],
        stats["hand-written"],
    )
    check(hand_count > 0 and hand_flops > 0, "jit_step: empty cost analysis or HLO")
    check(
        js_flops == hand_flops,
        f"jit_step: flops differ: jscope {js_flops}, hand-written {hand_flops}",
    )
    check(
        js_count == hand_count,
        f"jit_step: HLO instruction counts differ: jscope {js_count}, "
        f"hand-written {hand_count}",
    )
    report.rows.append(
        (
            "jit_step",
            "flops (jscope, hand)",
            f"{js_flops:.0f}, {hand_flops:.0f}",
            "equal",
            "PASS",
        )
    )
    report.rows.append(
        (
            "jit_step",
            "HLO instructions (jscope, hand)",
            f"{js_count}, {hand_count}",
            "equal",
            "PASS",
        )
    )

    # The two steps compute the same update.
    outs = {name: step(params, opt_state, x, y) for name, step in steps.items()}
    for a, b in zip(
        jax.tree.leaves(outs["jscope"]),
        jax.tree.leaves(outs["hand-written"]),
        strict=True,
    ):
        check(
            np.allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6),
            "jit_step: jscope's step result differs from the hand-written one",
        )

    def run(step):
        return lambda: jax.block_until_ready(step(params, opt_state, x, y))

    med = interleaved({name: run(step) for name, step in steps.items()}, rounds, reps)
    for name, t in med.items():
        report.value("jit_step", name, f"{t * 1e6:.1f} us/step")
    report.ratio(
        "jit_step",
        "jscope/hand-written",
        med["jscope"] / med["hand-written"],
        None,
        expect="info, ~1.0 expected",
    )


# ---------------------------------------------- 4. get_variable overhead at apply


def jscope_reads(x, n):
    d = x.shape[-1]
    out = []
    for i in range(n):
        with js.variable_scope(f"layer{i}"):
            out.append(js.get_variable("W", (d, d), initializer=LECUN))
            out.append(js.get_variable("b", (d,), initializer=ZEROS))
    return out


def hand_reads(params, n):
    out = []
    for i in range(n):
        layer = params[f"layer{i}"]
        out.append(layer["W"])
        out.append(layer["b"])
    return out


def bench_get_variable(report: Report, rounds: int, reps: int, n: int) -> None:
    d = 2
    print(
        f"\n[4] get_variable: overhead at apply, {2 * n} variables of d={d}, "
        "un-jitted (thread CPU time)"
    )
    x = jnp.ones((1, d), F32)
    params = hand_init(jax.random.key(0), x, n)
    variables = {"params": params}

    def js_fn(x):
        return jscope_reads(x, n)

    # Read-only: the model only fetches its variables, so the difference is
    # jscope's bookkeeping (scope entry, get_variable, apply's tree indexing).
    reads = {
        "jscope": lambda: js.apply(js_fn, variables, x),
        "hand-written": lambda: hand_reads(params, n),
    }
    got, want = reads["jscope"](), reads["hand-written"]()
    check(
        len(got) == len(want) and all(a is b for a, b in zip(got, want, strict=True)),
        "get_variable: js.apply did not return the stored arrays themselves",
    )
    models = Contestants(n)
    forward = _apply_fns(models, params, x)
    forward = {"jscope": forward["jscope"], "hand-written": forward["hand-written"]}
    check(
        np.allclose(
            np.asarray(forward["jscope"]()), np.asarray(_plain_mlp(params, x, n))
        ),
        "get_variable: jscope's d=2 forward differs from the plain jax.numpy MLP",
    )

    med = interleaved(reads, rounds, reps, clock=time.thread_time)
    overhead = (med["jscope"] - med["hand-written"]) / (2 * n) * 1e6
    report.value("get_variable", "jscope reads", f"{med['jscope'] * 1e6:.1f} us/apply")
    report.value(
        "get_variable",
        "hand-written reads",
        f"{med['hand-written'] * 1e6:.1f} us/apply",
    )
    report.value("get_variable", "jscope overhead", f"{overhead:.2f} us/get_variable")
    report.ratio(
        "get_variable",
        "reads jscope/hand-written",
        med["jscope"] / med["hand-written"],
        None,
    )

    fmed = interleaved(forward, rounds, max(1, reps // 4), clock=time.thread_time)
    report.value(
        "get_variable", "jscope forward", f"{fmed['jscope'] * 1e6:.1f} us/apply"
    )
    report.value(
        "get_variable",
        "hand-written forward",
        f"{fmed['hand-written'] * 1e6:.1f} us/apply",
    )
    # The same difference with the matmuls in between: bookkeeping interleaved
    # with eager ops can cost more than the same bookkeeping run alone.
    fwd_overhead = (fmed["jscope"] - fmed["hand-written"]) / (2 * n) * 1e6
    report.value(
        "get_variable", "jscope overhead in forward", f"{fwd_overhead:.2f} us/variable"
    )
    report.ratio(
        "get_variable",
        "forward jscope/hand-written",
        fmed["jscope"] / fmed["hand-written"],
        None,
    )


# ------------------------------------------------- 5. one get_variable call


_DICT_PASSES = 10


ORDINARY = "jscope, no plan"  # get_variable_call's reads without a replayed plan


def bench_get_variable_call(report: Report, rounds: int, n: int) -> None:
    """Microseconds per `js.get_variable` at apply, timed inside the run.

    Each round runs one `js.apply` that times ``n`` calls in one variable scope
    and then, in the same run, ``n`` reads of the same arrays from a dict (ten
    passes, averaged), both in the thread's CPU time (which does not count
    waiting for a core on a loaded machine). The target applies to the CPU time
    per call; the ratio to the dict read of the same round is the figure least
    moved by load.

    Two kinds of call are timed, in alternate applies: replayed ones (an eager
    apply replays the function's recorded plan, design §2.8) and ordinary ones
    (the run opens a name scope first, which ends its plan: the path a read takes
    under ``jax.jit`` or once a plan has ended).
    """
    print(
        f"\n[5] get_variable_call: {n} calls in one variable scope at apply, "
        "timed inside the run (thread CPU time)"
    )
    d = 2
    names = [f"v{i}" for i in range(n)]
    layer = {name: jnp.full((d, d), float(i), F32) for i, name in enumerate(names)}
    variables = {"params": {"block": layer}}
    timed: dict[str, float] = {}

    def timed_reads(kind: str) -> None:
        get = js.get_variable
        with js.variable_scope("block"):
            c0 = time.thread_time()
            for name in names:
                get(name, (d, d), initializer=LECUN)
            c1 = time.thread_time()
        for _ in range(_DICT_PASSES):  # a dict read is too quick to time once
            for name in names:
                layer[name]
        c2 = time.thread_time()
        timed[kind], timed[f"dict read ({kind})"] = c1 - c0, (c2 - c1) / _DICT_PASSES

    def replayed():
        timed_reads("jscope")

    def ordinary():
        with js.name_scope(None):  # ends the plan: every read takes the rules
            pass
        timed_reads(ORDINARY)

    def read_all():
        get = js.get_variable
        with js.variable_scope("block"):
            return [get(name, (d, d), initializer=LECUN) for name in names]

    for _ in range(2):  # ordinary, then replayed
        got = js.apply(read_all, variables)
        check(
            all(a is layer[name] for a, name in zip(got, names, strict=True)),
            "get_variable_call: js.apply did not return the stored arrays themselves",
        )
    kinds = ("jscope", ORDINARY)
    cpu: dict[str, list[float]] = {kind: [] for kind in kinds}
    cpu["dict read"] = []
    ratios: dict[str, list[float]] = {kind: [] for kind in kinds}
    js.apply(replayed, variables)  # warm-up; records the plan
    js.apply(ordinary, variables)
    for _ in range(rounds):
        for kind, fn in (("jscope", replayed), (ORDINARY, ordinary)):
            gc.collect()
            gc.disable()
            try:
                js.apply(fn, variables)
            finally:
                gc.enable()
            dict_read = timed[f"dict read ({kind})"]
            cpu[kind].append(timed[kind] / n * 1e6)
            ratios[kind].append(timed[kind] / max(dict_read, 1e-9))
            if kind == "jscope":
                cpu["dict read"].append(dict_read / n * 1e6)
    for name, samples in cpu.items():
        report.value(
            "get_variable_call", name, f"CPU {statistics.median(samples):.2f} us/call"
        )
    for kind in kinds:
        report.ratio(
            "get_variable_call",
            f"{kind}/dict read (CPU time, same run)",
            statistics.median(ratios[kind]),
            None,
        )
        report.bound(
            "get_variable_call",
            f"{kind} (CPU time)",
            statistics.median(cpu[kind]),
            "us/call",
            2.0,
        )


# ------------------------------------------------------------------ profiling


def _profile_init_trace(calls: int = 20) -> None:
    models = Contestants(100)
    x = jnp.ones((8, 64), F32)
    init = models.inits()["jscope"]
    for _ in range(calls):
        jax.eval_shape(lambda k: init(k, x), jax.random.key(0))


def _profile_apply_eager(calls: int = 500) -> None:
    models = Contestants(10)
    x = jax.random.normal(jax.random.key(1), (32, 256), F32)
    fn = _apply_fns(models, hand_init(jax.random.key(0), x, 10), x)["jscope"]
    for _ in range(calls):
        fn()


def _profile_get_variable(calls: int = 2000) -> None:
    x = jnp.ones((1, 2), F32)
    variables = {"params": hand_init(jax.random.key(0), x, 100)}
    for _ in range(calls):
        js.apply(lambda x: jscope_reads(x, 100), variables, x)


_PROFILE_TARGETS = {
    "init_trace": _profile_init_trace,
    "apply_eager": _profile_apply_eager,
    "get_variable": _profile_get_variable,
}


# ---------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: few rounds, seconds"
    )
    parser.add_argument(
        "--rounds", type=int, default=None, help="interleaved rounds per benchmark"
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=None,
        help="processes apply_eager measures in, one at a time (default 5; "
        "--quick: 1, this one)",
    )
    parser.add_argument(
        "--apply-eager-child",
        nargs=5,
        type=int,
        metavar=("ROUNDS", "REPS", "N", "D", "BATCH"),
        help=argparse.SUPPRESS,
    )
    parser.add_argument(
        "--profile",
        choices=sorted(_PROFILE_TARGETS),
        help="run only jscope's part of one benchmark, untimed, for a profiler: "
        "python -m cProfile -s cumtime benchmarks/bench_core.py --profile init_trace",
    )
    args = parser.parse_args(argv)
    if args.apply_eager_child:
        use_inits("seed")
        try:
            print(json.dumps(measure_apply_eager(*args.apply_eager_child)))
        except CheckFailed as e:
            print(f"CHECK FAILED: {e}", file=sys.stderr)
            return 1
        return 0
    if args.profile:
        _PROFILE_TARGETS[args.profile]()
        return 0
    rounds = args.rounds or (3 if args.quick else 25)
    reps = 5 if args.quick else 50
    processes = args.processes or (1 if args.quick else 5)

    print(
        f"jax {jax.__version__} ({jax.default_backend()}), flax {flax.__version__}, "
        f"haiku {hk.__version__}, optax {optax.__version__}, jscope {js.__version__}, "
        f"python {platform.python_version()}, {os.cpu_count()} CPUs; "
        f"medians of {rounds} interleaved rounds"
    )

    report = Report()
    try:
        bench_init_trace(report, rounds, n=100, d=64, inits="seed")
        bench_init_trace(report, rounds, n=100, d=64, inits="lecun")
        use_inits("seed")
        # Short rounds, five times as many: the per-round ratio moves with the
        # machine's speed, and more rounds pin its median down closer.
        bench_apply_eager(
            report, rounds * 5, max(1, reps // 5), n=10, d=256, batch=32,
            processes=processes,
        )  # fmt: skip
        bench_jit_step(report, rounds, reps, n=10, d=256, batch=32)
        bench_get_variable(report, rounds, reps, n=100)
        bench_get_variable_call(report, rounds * 4, n=200)
    except CheckFailed as e:
        print(f"\nCHECK FAILED: {e}", file=sys.stderr)
        return 1
    print("\n" + report.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
