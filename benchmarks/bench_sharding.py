"""Sharded variables on 8 simulated CPU devices: memory, trace overhead, a train step.

The model is the GPT of ``examples/sharded_training.py`` (imported from there, with
its `js.ShardingRules`: attention heads split over ``model`` by path rules, the
MLP's hidden units and the vocabulary by logical axes, the rest replicated), at a
larger size for the memory measurement. The script measures:

1. **memory**: the program ``js.init(gpt, key, cfg, x, rules=rules)`` compiles
   (``sharded_init_fn``, compiled by ``compile_sharded_init`` as `js.init` does:
   threefry unrolled, loop-invariant counters left in the loop), and its
   ``compiled.memory_analysis()`` per device: the
   bytes it *holds* at the end (its outputs, the variables' shards) and its
   *peak* (arguments + outputs + temporaries), against the bytes of the whole
   model (every variable, unsharded). On a mesh whose ``model`` axis has N
   devices the goal is ≤ 1.1/N of the whole (reported as ``... × N / whole`` ≤
   1.10), on 2×4 (N = 4) and 1×8 (N = 8; not with ``--quick``). For reference,
   the peak of the same init unsharded on one device (XLA's temporaries for the
   random bits are part of any init's peak). It checks that the compiled
   outputs carry the rules' shardings and that the sharded init equals the
   unsharded one bit for bit.
2. **init_trace**: the time to trace and lower what ``js.init(gpt, key, cfg, x,
   rules=rules)`` compiles (``sharded_init_fn``, lowered by
   ``lower_sharded_init``; no XLA compile) against the same init without rules,
   jitted and lowered the same way (threefry unrolled); and ``js.init(...,
   rules=rules)`` inside a caller's ``jax.jit`` (each variable constrained in
   that trace) against the same without rules, and against the same without
   rules whose variables are then placed by hand (one
   ``jax.lax.with_sharding_constraint`` of the tree to the rules' specs: the
   program a user would write without jscope's rules). A new function every call, so
   no cache is hit; interleaved round by round; each ratio is the median of
   the per-round ratios, of wall time and of the process's CPU time. Target
   ≤ 1.05 (wall). For reference, the cost of lowering threefry unrolled (the
   peak-memory fix, no rules) against JAX's CPU lowering.
3. **train_step**: one Adam training step (the example's step, batch 16 of 64
   characters) on a mesh of 1 device against the 2×4 mesh of 8, interleaved;
   checked to give the same loss (float32 reduction order only). Report only:
   8 simulated devices share this machine's cores, so this is the cost of the
   partitioned program's collectives and bookkeeping, not a speed-up.

Usage::

    python benchmarks/bench_sharding.py           # full run (a few minutes)
    python benchmarks/bench_sharding.py --quick   # smoke run (under a minute)
    python benchmarks/bench_sharding.py --only init_trace --rounds 41

The script sets ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` before jax
is imported. It exits non-zero when a correctness check fails; missed timing
targets are reported as FAIL in the table but do not change the exit code.
"""

from __future__ import annotations

import argparse
import gc
import os
import pathlib
import platform
import statistics
import sys
import time
from collections.abc import Callable

os.environ["JAX_PLATFORMS"] = "cpu"  # the benchmarks are defined on CPU
_FLAG = "--xla_force_host_platform_device_count"
os.environ["XLA_FLAGS"] = " ".join(
    [f for f in os.environ.get("XLA_FLAGS", "").split() if _FLAG not in f]
    + [f"{_FLAG}=8"]
)
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "examples"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import sharded_training as example  # noqa: E402
from bench_core import CheckFailed, Report, check  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import jscope as js  # noqa: E402
from jscope._src import jax_compat, meshes, run  # noqa: E402  (js.init's program)

# Trace and compile times are measured: never read an executable from disk.
jax.config.update("jax_enable_compilation_cache", False)

BIG = example.Config(length=64, embed=512, heads=8, mlp=2048, layers=8)
SMALL = example.Config(length=64, embed=128, heads=8, mlp=512, layers=4)
QUICK = example.Config(length=32, embed=64, heads=8, mlp=256, layers=2)
BATCH = 16
TARGET_MEMORY = 1.10  # peak x N / whole
TARGET_TRACE = 1.05


def mesh_of(shape: tuple[int, int], devices=None) -> jax.sharding.Mesh:
    return jax.make_mesh(
        shape, ("data", "model"), (AxisType.Auto, AxisType.Auto), devices=devices
    )


def sharded_init(cfg: example.Config, rules: js.ShardingRules | None) -> Callable:
    """A new ``(key, ids) -> variables`` function, to be jitted, every call."""

    def init(key, ids):
        return js.init(example.gpt, key, cfg, ids, rules=rules)

    return init


def interleaved(fns: dict[str, Callable[[], object]], rounds: int) -> dict:
    """Wall seconds of every call of each fn, round by round, the order rotating."""
    return interleaved_wall_cpu(fns, rounds)[0]


def interleaved_wall_cpu(
    fns: dict[str, Callable[[], object]], rounds: int
) -> tuple[dict, dict]:
    """As `interleaved`: the wall seconds, and the process's CPU seconds beside.

    CPU time does not count waiting for a core, which on a loaded machine
    inflates wall time.
    """
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():  # warm-up, untimed
        fn()
    names = list(fns)
    for r in range(rounds):
        gc.collect()
        gc.disable()
        try:
            for name in names[r % len(names) :] + names[: r % len(names)]:
                c0, w0 = time.process_time(), time.perf_counter()
                fns[name]()
                wall[name].append(time.perf_counter() - w0)
                cpu[name].append(time.process_time() - c0)
        finally:
            gc.enable()
    return wall, cpu


def paired_ratio(a: list[float], b: list[float]) -> float:
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


# ------------------------------------------------------------------ 1. memory


def bench_memory(report: Report, cfg: example.Config, shape: tuple[int, int]) -> None:
    mesh = mesh_of(shape)
    n = mesh.shape["model"]
    rules = example.sharding_rules(mesh)
    key = jax.random.key(0)
    ids = jnp.zeros((BATCH, cfg.length), jnp.int32)
    label = f"{shape[0]}x{shape[1]}"
    print(f"\n[1] memory: sharded init on a {label} mesh (model axis N = {n})")

    shapes = js.flatten(jax.eval_shape(sharded_init(cfg, None), key, ids))
    whole = sum(s.size * s.dtype.itemsize for s in shapes.values())
    # The program js.init(..., rules=rules) compiles and runs, compiled as it does.
    jitted, arrays, plan = run.sharded_init_fn(
        example.gpt, key, (cfg, ids), {}, rules, with_output=False
    )
    compiled = meshes.compile_sharded_init(jitted, arrays)
    mem = compiled.memory_analysis()
    check(mem is not None, "compiled.memory_analysis() returned None on CPU")
    peak = (
        mem.argument_size_in_bytes
        + mem.output_size_in_bytes
        + mem.temp_size_in_bytes
        - mem.alias_size_in_bytes
    )

    # The outputs carry the rules' shardings, and hold the unsharded init's values.
    specs = js.partition_specs(example.gpt, key, cfg, ids, rules=rules)
    want = js.flatten(js.shardings(specs, rules))
    paths = [f"{coll}/{path}" for coll, path, _ in plan]
    for path, sharding in zip(paths, compiled.output_shardings[1], strict=True):
        check(
            sharding.is_equivalent_to(want[path], len(shapes[path].shape)),
            f"memory {label}: {path} compiled to {sharding}, rules say {want[path]}",
        )
    # The same init unsharded, on one device: its values and its peak.
    plain_compiled = jax.jit(sharded_init(cfg, None)).lower(key, ids).compile()
    sharded = dict(zip(paths, compiled(arrays)[1], strict=True))
    plain = plain_compiled(key, ids)
    for path, value in js.flatten(plain).items():
        check(
            np.array_equal(np.asarray(sharded[path]), np.asarray(value)),
            f"memory {label}: sharded init differs from the unsharded one at {path}",
        )

    plain_mem = plain_compiled.memory_analysis()
    plain_peak = (
        plain_mem.argument_size_in_bytes
        + plain_mem.output_size_in_bytes
        + plain_mem.temp_size_in_bytes
        - plain_mem.alias_size_in_bytes
    )

    mib = 2**20
    held = mem.output_size_in_bytes
    report.value("memory", f"whole model ({label})", f"{whole / mib:.2f} MiB")
    report.value("memory", f"held per device ({label})", f"{held / mib:.2f} MiB")
    report.value(
        "memory",
        f"peak per device ({label})",
        f"{peak / mib:.2f} MiB (args {mem.argument_size_in_bytes / mib:.2f}, "
        f"out {held / mib:.2f}, temp {mem.temp_size_in_bytes / mib:.2f})",
    )
    report.value(
        "memory", f"peak of the unsharded init ({label})", f"{plain_peak / mib:.2f} MiB"
    )
    report.ratio(
        "memory", f"held/whole x N ({label}, N={n})", held * n / whole, TARGET_MEMORY
    )
    report.ratio(
        "memory", f"peak/whole x N ({label}, N={n})", peak * n / whole, TARGET_MEMORY
    )
    report.ratio(
        "memory",
        f"peak/unsharded peak x N ({label}, N={n})",
        peak * n / plain_peak,
        None,
    )


# ---------------------------------------------------------- 2. trace overhead


def bench_trace(report: Report, cfg: example.Config, rounds: int) -> None:
    mesh = mesh_of((2, 4))
    rules = example.sharding_rules(mesh)
    key = jax.random.key(0)
    ids = jnp.zeros((BATCH, cfg.length), jnp.int32)
    print(f"\n[2] init_trace: trace + lower the init, {rounds} rounds")
    # The lowering js.init(rules=) gives its program (threefry unrolled on CPU).
    unrolled = jax_compat.unrolled_threefry_lowering()

    def program(r):
        """What js.init(..., rules=r) traces and lowers before it compiles."""
        if r is None:  # the same init without rules, jitted, lowered the same way
            return lambda: (
                jax.jit(sharded_init(cfg, None)).trace(key, ids).lower(**unrolled)
            )
        return lambda: meshes.lower_sharded_init(
            *run.sharded_init_fn(
                example.gpt, key, (cfg, ids), {}, r, with_output=False
            )[:2]
        )

    def in_a_jit(r):
        # js.init inside a caller's jax.jit; a new function each call: jax.jit
        # caches traces by function identity.
        return lambda: jax.jit(sharded_init(cfg, r)).lower(key, ids)

    # The same variables placed by hand: js.init without rules inside the
    # caller's jit, then one jax.lax.with_sharding_constraint of the whole tree
    # to the specs the rules give (resolved once, outside the timing).
    specs = js.partition_specs(example.gpt, key, cfg, ids, rules=rules)
    by_hand = jax.tree.map(
        lambda spec: NamedSharding(mesh, spec),
        specs,
        is_leaf=lambda x: isinstance(x, P),
    )

    def constrained_by_hand():
        init = sharded_init(cfg, None)
        return jax.jit(
            lambda k, x: jax.lax.with_sharding_constraint(init(k, x), by_hand)
        ).lower(key, ids)

    fns = {
        "rules": program(rules),
        "no rules": program(None),
        "rules, in a jit": in_a_jit(rules),
        "no rules, in a jit": in_a_jit(None),
        "constrained by hand, in a jit": constrained_by_hand,
    }
    wall, cpu = interleaved_wall_cpu(fns, rounds)
    for name in fns:
        report.value(
            "init_trace",
            name,
            f"{statistics.median(wall[name]) * 1e3:.1f} ms "
            f"(CPU {statistics.median(cpu[name]) * 1e3:.1f} ms)",
        )
    for label, a, b, target in (
        ("rules/no rules", "rules", "no rules", TARGET_TRACE),
        ("rules/no rules, CPU time", "rules", "no rules", None),
        ("rules/no rules in a jit", "rules, in a jit", "no rules, in a jit",
         TARGET_TRACE),
        ("rules/no rules in a jit, CPU time", "rules, in a jit", "no rules, in a jit",
         None),
        ("rules/constrained by hand in a jit", "rules, in a jit",
         "constrained by hand, in a jit", TARGET_TRACE),
        ("rules/constrained by hand in a jit, CPU time", "rules, in a jit",
         "constrained by hand, in a jit", None),
        ("threefry unrolled/JAX's lowering", "no rules", "no rules, in a jit", None),
    ):  # fmt: skip
        samples = cpu if label.endswith("CPU time") else wall
        report.ratio("init_trace", label, paired_ratio(samples[a], samples[b]), target)
    print(f"  load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


# ------------------------------------------------------------- 3. train step


def make_step(cfg: example.Config, mesh, params_key, ids, targets):
    """The example's jitted step on ``mesh``; returns ``(step, params, opt_state)``."""
    rules = example.sharding_rules(mesh)
    specs = js.partition_specs(example.gpt, params_key, cfg, ids, rules=rules)
    param_sh = js.shardings(specs, rules)["params"]
    opt = optax.adam(1e-3)
    params = js.init(example.gpt, params_key, cfg, ids, rules=rules)["params"]
    opt_sh = example.optimizer_shardings(opt, params, param_sh, mesh)
    opt_state = jax.jit(opt.init, out_shardings=opt_sh)(params)
    batch_sh = NamedSharding(mesh, P("data", None))
    step = example.make_train_step(cfg, rules, opt, param_sh, opt_sh, batch_sh)
    return step, params, opt_state, jax.device_put((ids, targets), batch_sh)


def bench_step(report: Report, cfg: example.Config, rounds: int, reps: int) -> None:
    print(f"\n[3] train_step: 1 device vs 8, {rounds} rounds of {reps} steps")
    key = jax.random.key(0)
    data = np.frombuffer(example.load_text()[0], np.uint8)
    ids, targets = example.load_batch(data, np.arange(BATCH), 1, cfg.length, 0)
    meshes = {
        "1 device": mesh_of((1, 1), devices=jax.devices()[:1]),
        "8 devices (2x4)": mesh_of((2, 4)),
    }
    runs = {}
    losses = {}
    for name, mesh in meshes.items():
        step, params, opt_state, batch = make_step(cfg, mesh, key, ids, targets)
        # The first step, from the same init and batch, must give the same loss.
        params, opt_state, loss = step(params, opt_state, *batch)
        losses[name] = float(loss)
        state = {"params": params, "opt": opt_state}

        def run(step=step, state=state, batch=batch):
            for _ in range(reps):
                p, o, loss = step(state["params"], state["opt"], *batch)
                state["params"], state["opt"] = p, o
            loss.block_until_ready()

        runs[name] = run
    one, eight = losses.values()
    check(
        abs(one - eight) <= 1e-4 * abs(one),
        f"train_step: loss {eight} on 8 devices, {one} on 1",
    )
    print(f"  first-step loss: 1 device {one:.6f}, 8 devices {eight:.6f}")
    samples = interleaved(runs, rounds)
    for name, s in samples.items():
        report.value("train_step", name, f"{statistics.median(s) / reps * 1e3:.2f} ms")
    names = list(samples)
    report.ratio(
        "train_step",
        "8 devices/1 device",
        paired_ratio(samples[names[1]], samples[names[0]]),
        None,
        "report only",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run")
    parser.add_argument("--rounds", type=int, default=None, help="timing rounds")
    parser.add_argument(
        "--only",
        choices=("memory", "init_trace", "train_step"),
        help="run one benchmark",
    )
    args = parser.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 21)
    print(
        f"jax {jax.__version__} ({jax.default_backend()}, {jax.device_count()} "
        f"devices), optax {optax.__version__}, jscope {js.__version__}, "
        f"python {platform.python_version()}, {os.cpu_count()} CPUs"
    )
    start = time.perf_counter()
    report = Report()
    try:
        check(jax.device_count() == 8, f"need 8 devices, found {jax.device_count()}")
        chosen = {args.only} if args.only else {"memory", "init_trace", "train_step"}
        if "memory" in chosen:
            for shape in ((2, 4),) if args.quick else ((2, 4), (1, 8)):
                bench_memory(report, QUICK if args.quick else BIG, shape)
        if "init_trace" in chosen:
            bench_trace(report, QUICK if args.quick else SMALL, rounds)
        if "train_step" in chosen:
            bench_step(
                report, QUICK if args.quick else SMALL, rounds, 2 if args.quick else 5
            )
    except CheckFailed as e:
        print(f"\nCHECK FAILED: {e}", file=sys.stderr)
        return 1
    print("\n" + report.table())
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
