"""Checkpoint benchmarks: js.Saver against raw Orbax, and crash consistency.

1. ``save``: a blocking save of a 256 MiB variable tree (16 float32 arrays of
   2048x2048), through ``js.Saver().save`` and through Orbax's
   ``StandardCheckpointer`` (``save`` + ``wait_until_finished``), in MB/s.
2. ``restore``: the same checkpoints restored into a tree of
   ``jax.ShapeDtypeStruct`` (``js.Saver().restore`` vs
   ``StandardCheckpointer.restore``), in MB/s.
3. ``nonblocking``: how long ``saver.save(..., blocking=False)`` blocks the caller
   (it copies the arrays and hands the copies to Orbax in the background, so no
   Orbax call is made in it), and, for reference, how long Orbax's own
   asynchronous ``save`` blocks.
4. ``fault``: a child process saves a 32 MiB tree in a loop (``max_to_keep=2``)
   and is killed with SIGKILL at a random moment, again and again in the same
   directory, in three modes: blocking saves of new steps, non-blocking saves,
   and blocking saves over the same path (each an overwrite). After each kill,
   ``js.latest_checkpoint`` must name a checkpoint that ``js.verify_checkpoint``
   accepts and that restores bit-exactly; after the last, the next save must
   remove every temporary directory the killed writers left.

Beside the save and restore times, the script reports jscope's integrity work
(checksums and their checks): the time spent in it as a share of each call, which
bounds what it adds (a restore runs the checks after Orbax's read, a save while
Orbax writes), and, as a direct but noisier figure, the same save or restore with
the checks switched off in the same round. It also reports the fsync of each new
checkpoint.

Contestants run side by side in one process, interleaved round by round (jscope
first in even rounds, Orbax first in odd ones); each reports the median, and a
ratio is the median of the per-round ratios.

Usage::

    python benchmarks/bench_checkpoint.py           # full run (about 8 minutes)
    python benchmarks/bench_checkpoint.py --quick   # smoke run: 16 MiB, 3 kills

The script exits non-zero when a correctness check fails (a restored tree
differs from the saved one, or a killed save leaves no checkpoint that verifies
and restores bit-exactly).
Missed timing targets are reported as FAIL but do not change the exit code.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable

os.environ["JAX_PLATFORMS"] = "cpu"  # the benchmarks are defined on CPU

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402

import jscope as js  # noqa: E402
from jscope._src.checkpoint import integrity, layout  # noqa: E402  (timed parts)


class CheckFailed(Exception):
    """A correctness check of the benchmark failed."""


def check(ok: bool, message: str) -> None:
    if not ok:
        raise CheckFailed(message)


class Report:
    """Collects result rows; prints a Markdown table at the end."""

    def __init__(self):
        self.rows: list[tuple[str, str, str, str, str]] = []

    def value(self, bench: str, label: str, value: str) -> None:
        self.rows.append((bench, label, value, "", ""))
        print(f"  {label:<36} {value}")

    def ratio(self, bench: str, label: str, ratio: float, at_least: float) -> None:
        verdict = "PASS" if ratio >= at_least else "FAIL"
        self.rows.append((bench, label, f"{ratio:.3f}x", f">= {at_least:.2f}", verdict))
        print(
            f"RATIO {bench} {label} = {ratio:.3f} (target >= {at_least:.2f}) {verdict}"
        )

    def limit(self, bench: str, label: str, ms: float, at_most_ms: float) -> None:
        verdict = "PASS" if ms <= at_most_ms else "FAIL"
        target = f"< {at_most_ms:g} ms"
        self.rows.append((bench, label, f"{ms:.2f} ms", target, verdict))
        print(f"BLOCK {bench} {label} = {ms:.2f} ms (target {target}) {verdict}")

    def limit_pct(self, bench: str, label: str, pct: float, at_most: float) -> None:
        verdict = "PASS" if pct <= at_most else "FAIL"
        target = f"<= {at_most:g} %"
        self.rows.append((bench, label, f"{pct:.1f} %", target, verdict))
        print(f"COST {bench} {label} = {pct:.2f} % (target {target}) {verdict}")

    def table(self) -> str:
        head = ("benchmark", "contestant / ratio", "median", "target", "result")
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines)


def make_tree(mib: int) -> dict:
    """A variable tree of ``mib`` MiB: float32 arrays of 2048x2048 (16 MiB each)."""
    n = max(1, mib // 16)
    keys = jax.random.split(jax.random.key(0), n)
    layers = {
        f"layer{i}": {"W": jax.random.normal(keys[i], (2048, 2048))} for i in range(n)
    }
    tree = {"params": layers, "state": {"step": jnp.array(7, jnp.int32)}}
    return jax.block_until_ready(tree)


def nbytes(tree: dict) -> int:
    return sum(x.nbytes for x in jax.tree.leaves(tree))


def timed(fn: Callable[[], object], pause: float = 0.0) -> tuple[float, object]:
    """Seconds that ``fn()`` takes (until its arrays are ready), and its result.

    ``pause``: seconds to sleep after the garbage collection, before the clock
    starts (a collection burns this process's share of a loaded CPU just before
    a call of a few milliseconds, which the scheduler then stretches).
    """
    gc.collect()
    gc.disable()
    time.sleep(pause)
    try:
        start = time.perf_counter()
        result = jax.block_until_ready(fn())
        return time.perf_counter() - start, result
    finally:
        gc.enable()


@contextlib.contextmanager
def orbax_timer():
    """Times the Orbax checkpointer calls (outermost only) made inside the block."""
    inner, depth = [0.0], [0]
    names = ("save", "restore", "wait_until_finished")
    originals = {
        (cls, n): cls.__dict__[n]
        for cls in (ocp.AsyncCheckpointer, ocp.Checkpointer)
        for n in names
        if n in cls.__dict__
    }

    def timing(original):
        def method(self, *args, **kwargs):
            depth[0] += 1
            start = time.perf_counter()
            try:
                return original(self, *args, **kwargs)
            finally:
                depth[0] -= 1
                if not depth[0]:
                    inner[0] += time.perf_counter() - start

        return method

    for (cls, name), original in originals.items():
        setattr(cls, name, timing(original))
    try:
        yield inner
    finally:
        for (cls, name), original in originals.items():
            setattr(cls, name, original)


@contextlib.contextmanager
def integrity_timer():
    """Times jscope's integrity work made inside the block: ``{"integrity",
    "background", "fsync"}``.

    ``integrity``: the time the calling thread (or the save's commit) waits in
    the checks: the checksum file, the file checks, the wait for the array
    checksums once Orbax has finished (`integrity.Pending.result`,
    `check_arrays`), the checksums of anything not hashed in the background.
    The array checksums themselves run on worker threads while Orbax writes or
    reads (``background``: their time, summed over the threads); what that
    costs Orbax's own threads shows only in the paired on/off comparison
    (`integrity_off`). ``fsync``: the fsync of each new checkpoint. Only the
    outermost timed call counts (``check_arrays`` calls ``checksums``).
    """
    spent = {"integrity": 0.0, "background": 0.0, "fsync": 0.0}
    depth = {"integrity": 0, "fsync": 0}
    patched = [
        (integrity, name, "integrity")
        for name in ("checksums", "file_table", "write", "read", "check_files")
    ] + [
        (integrity, "check_arrays", "integrity"),
        (integrity.Pending, "result", "integrity"),
        (integrity, "_hash_all", "background"),
        (integrity, "_checksum_of", "background"),
        (layout, "fsync_tree", "fsync"),
    ]
    originals = [(mod, name, getattr(mod, name)) for mod, name, _ in patched]

    def timing(original, bucket):
        if bucket == "background":  # on worker threads, concurrently: a sum

            def summed(*args, **kwargs):
                start = time.perf_counter()
                try:
                    return original(*args, **kwargs)
                finally:
                    spent[bucket] += time.perf_counter() - start

            return summed

        def function(*args, **kwargs):
            depth[bucket] += 1
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                depth[bucket] -= 1
                if not depth[bucket]:
                    spent[bucket] += time.perf_counter() - start

        return function

    for (mod, name, bucket), (_, _, original) in zip(patched, originals, strict=True):
        setattr(mod, name, timing(original, bucket))
    try:
        yield spent
    finally:
        for mod, name, original in originals:
            setattr(mod, name, original)


class _NoEarly(integrity.Early):
    def arrived(self, key, value):
        pass


@contextlib.contextmanager
def integrity_off():
    """Inside the block, js.Saver computes and checks no checksums.

    Its checkpoints still get their (empty) checksum file, so saves and restores
    take the same path otherwise: the difference of a save or restore with and
    without the block, in the same round, is what the integrity checks add.
    """
    nothing = {
        "checksums": lambda views: dict.fromkeys(views),
        "file_table": lambda root: {},
        "check_files": lambda ckpt, files: None,
        "check_arrays": lambda ckpt, values, expected, early=None: None,
        "Early": _NoEarly,  # no checksums started as the arrays arrive
    }
    originals = {name: getattr(integrity, name) for name in nothing}
    for name, fn in nothing.items():
        setattr(integrity, name, fn)
    try:
        yield
    finally:
        for name, fn in originals.items():
            setattr(integrity, name, fn)


def du(path: str) -> int:
    """The bytes of the files under ``path``."""
    return sum(
        os.path.getsize(os.path.join(root, f))
        for root, _, files in os.walk(path)
        for f in files
    )


def same(a: dict, b: dict) -> bool:
    fa, fb = js.flatten(a), js.flatten(b)
    return sorted(fa) == sorted(fb) and all(
        fa[k].dtype == fb[k].dtype and np.array_equal(np.asarray(fa[k]), fb[k])
        for k in fa
    )


# ------------------------------------------------------ 1-3. save and restore


def bench_throughput(report: Report, workdir: str, rounds: int, mib: int) -> None:
    tree = make_tree(mib)
    size = nbytes(tree)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
    print(
        f"\n[1-3] save / restore of a {size / 2**20:.0f} MiB tree "
        f"({len(jax.tree.leaves(tree))} arrays), {rounds} interleaved rounds"
    )
    saver = js.Saver(max_to_keep=None)  # deletion is not part of the timing
    orbax = ocp.StandardCheckpointer()
    samples: dict[str, list[float]] = {
        f"{who} {op}": [] for who in ("js", "ocp", "off") for op in ("save", "restore")
    }
    # How long a non-blocking save holds the caller; "js cpu": its thread's CPU
    # time in it (what the load does not stretch).
    blocks: dict[str, list[float]] = {"js": [], "ocp": [], "js cpu": []}
    # jscope's own share of each of its calls: the time spent outside Orbax.
    own: dict[str, list[float]] = {"save": [], "restore": []}
    disk: dict[str, list[int]] = {"js": [], "ocp": []}  # bytes of each checkpoint
    # jscope's integrity work inside its save and restore, and the fsync of the
    # new checkpoint's files before it is moved into place.
    checks: dict[str, list[float]] = {
        "save": [],
        "restore": [],
        "fsync": [],
        "save hashing": [],
        "restore hashing": [],
    }

    def js_save(path):
        return lambda: saver.save(tree, path)

    def ocp_save(path):
        def run():
            orbax.save(path, tree)
            orbax.wait_until_finished()

        return run

    for r in range(-1, rounds):  # round -1 warms up, untimed
        d = os.path.join(workdir, f"round{r + 1}")
        os.makedirs(d)
        js_path, ocp_path = os.path.join(d, "js"), os.path.join(d, "ocp")
        order = [("js", js_path), ("ocp", ocp_path)]
        if r % 2:
            order.reverse()
        # jscope with its integrity checks off, next to jscope with them on
        # (before it in even rounds, after it in odd ones).
        paired = list(order)
        paired.insert(paired.index(("js", js_path)) + r % 2, ("off", f"{js_path}-off"))
        # Non-blocking saves: how long the caller is held. Measured first, with
        # the disk flushed (as after a previous save that completed long ago).
        for who, _ in order:
            path = os.path.join(d, f"{who}-async")
            os.sync()
            if who == "js":  # no Orbax call in it: Orbax starts in the commit

                def save(p=path):
                    cpu = time.thread_time()
                    saver.save(tree, p, blocking=False)
                    blocks["js cpu"].append(time.thread_time() - cpu)

                held = timed(save, pause=0.05)[0]
                saver.wait_until_finished()
            else:
                held = timed(lambda p=path: orbax.save(p, tree), pause=0.05)[0]
                orbax.wait_until_finished()
            blocks[who].append(held)
        for who, path in paired:
            fn = ocp_save(path) if who == "ocp" else js_save(path)
            off = integrity_off() if who == "off" else contextlib.nullcontext()
            os.sync()  # each save starts with the previous one's data on disk
            with off, orbax_timer() as inner, integrity_timer() as spent:
                samples[f"{who} save"].append(timed(fn)[0])
            if who == "js":
                own["save"].append(samples["js save"][-1] - inner[0])
                checks["save"].append(spent["integrity"])
                checks["save hashing"].append(spent["background"])
                checks["fsync"].append(spent["fsync"])
        for who, path in paired:
            restore = orbax.restore if who == "ocp" else saver.restore
            off = integrity_off() if who == "off" else contextlib.nullcontext()
            with off, orbax_timer() as inner, integrity_timer() as spent:
                seconds, restored = timed(lambda p=path, f=restore: f(p, abstract))
            samples[f"{who} restore"].append(seconds)
            if who == "js":
                own["restore"].append(seconds - inner[0])
                checks["restore"].append(spent["integrity"])
                checks["restore hashing"].append(spent["background"])
            check(same(restored, tree), f"{who} restore differs from the saved tree")
        for who, path in order:
            disk[who].append(du(path))
        check(
            same(saver.restore(os.path.join(d, "js-async"), abstract), tree),
            "a non-blocking save did not restore to the saved tree",
        )
        shutil.rmtree(d)
        if r == -1:
            for s in (*samples.values(), *blocks.values(), *own.values()):
                s.clear()
            for s in checks.values():
                s.clear()

    goal = {"save": 1.5, "restore": 1.0}
    med = {k: statistics.median(v) for k, v in samples.items()}
    mbs = {k: size / 1e6 / v for k, v in med.items()}
    for op in ("save", "restore"):
        report.value(op, "jscope (js.Saver)", f"{mbs[f'js {op}']:.0f} MB/s")
        report.value(op, "orbax (StandardCheckpointer)", f"{mbs[f'ocp {op}']:.0f} MB/s")
        # The two contestants of a round run back to back, so the median of the
        # per-round ratios is less sensitive to load drifting over the run.
        js_s, ocp_s = samples[f"js {op}"], samples[f"ocp {op}"]
        paired = [o / j for j, o in zip(js_s, ocp_s, strict=True)]
        report.ratio(op, "jscope/orbax throughput", statistics.median(paired), goal[op])
        report.value(
            op,
            "ratio of the median throughputs",
            f"{mbs[f'js {op}'] / mbs[f'ocp {op}']:.3f}x",
        )
        share = 1e3 * statistics.median(own[op])
        report.value(op, "jscope's own share (outside Orbax)", f"{share:.2f} ms")
        # The integrity work: the time the call waits in the checks (the array
        # checksums run on worker threads while Orbax writes or reads; only
        # what is left when Orbax is done is waited for), and their total time.
        ms = 1e3 * statistics.median(checks[op])
        report.value(op, "time waited in the integrity checks", f"{ms:.2f} ms")
        share = [c / t for c, t in zip(checks[op], js_s, strict=True)]
        report.limit_pct(
            op,
            "integrity share of the call",
            100 * statistics.median(share),
            5.0,
        )
        ms = 1e3 * statistics.median(checks[f"{op} hashing"])
        report.value(op, "array hashing on worker threads (sum)", f"{ms:.2f} ms")
        # The same call with the checks off, next to it in the same round: all
        # they add, their threads' competition with Orbax's included (as noisy
        # as the disk; see the README).
        off_s = samples[f"off {op}"]
        added = [(t - o) / t for t, o in zip(js_s, off_s, strict=True)]
        shown = " ".join(f"{100 * a:+.1f}" for a in added)
        print(f"  {op}: integrity checks on vs off, per round (%): {shown}")
        report.limit_pct(
            op, "checks on vs off (paired, noisy)", 100 * statistics.median(added), 5.0
        )
    fsync_ms = 1e3 * statistics.median(checks["fsync"])
    report.value("save", "fsync of the new checkpoint", f"{fsync_ms:.2f} ms")
    js_ms = 1e3 * statistics.median(blocks["js"])
    ocp_ms = 1e3 * statistics.median(blocks["ocp"])
    shown = " ".join(f"{1e3 * b:.1f}" for b in blocks["js"])
    print(f"  nonblocking: js.Saver held the caller, per round (ms): {shown}")
    report.limit("nonblocking", "js.Saver save(blocking=False)", js_ms, 5.0)
    cpu_ms = 1e3 * statistics.median(blocks["js cpu"])
    report.value("nonblocking", "the caller's CPU time in it", f"{cpu_ms:.2f} ms")
    report.value("nonblocking", "orbax async save (reference)", f"{ocp_ms:.2f} ms")
    for who, label in (("js", "jscope (zstd where worth it)"), ("ocp", "orbax (zstd)")):
        mb = statistics.median(disk[who]) / 1e6
        report.value("save", f"size on disk, {label}", f"{mb:.0f} MB")


# ------------------------------------------------------------- 4. fault test

CHILD = textwrap.dedent(
    """
    import sys
    import jax.numpy as jnp
    import jscope as js

    directory, mode = sys.argv[1], sys.argv[4]
    start, n = int(sys.argv[2]), int(sys.argv[3])
    base = jnp.arange(n, dtype=jnp.float32)
    saver = js.Saver(max_to_keep=2)
    step = start
    while True:
        tree = {"params": {f"w{i}": base * (i + 1) + step for i in range(8)},
                "state": {"step": jnp.array(step, jnp.int32)}}
        saver.save(
            tree,
            directory + "/model",
            global_step=None if mode == "overwrite" else step,
            blocking=mode != "async",
        )
        print(f"saved {step}", flush=True)
        step += 1
    """
)

FAULT_MODES = ("sync", "async", "overwrite")


def expected_tree(step: int, n: int) -> dict:
    base = np.arange(n, dtype=np.float32)
    return {
        "params": {f"w{i}": base * (i + 1) + step for i in range(8)},
        "state": {"step": np.array(step, np.int32)},
    }


def _kill_trial(directory: str, mode: str, next_step: int, n: int, pause: float):
    """Starts a saving child, kills it with SIGKILL; returns what it left."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, directory, str(next_step), str(n), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        line = child.stdout.readline()
        check(line.startswith("saved"), f"{mode}: child wrote {line!r}")
        while js.latest_checkpoint(directory) is None:  # the first commit
            time.sleep(0.005)
        time.sleep(pause)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
    return set(os.listdir(directory))


def bench_fault(report: Report, workdir: str, trials: int, mib: int) -> None:
    n = mib * 2**20 // 4 // 8  # eight float32 arrays
    print(
        f"\n[4] fault injection: {trials} SIGKILLs per mode ({', '.join(FAULT_MODES)}) "
        f"of a process saving a {8 * n * 4 / 2**20:.0f} MiB tree in a loop "
        "(max_to_keep=2)"
    )
    rng = random.Random(0)
    total = {"trials": 0, "mid_save": 0, "mid_swap": 0, "restored": 0}
    for mode in FAULT_MODES:
        directory = os.path.join(workdir, f"fault-{mode}")
        os.makedirs(directory)
        next_step, counts = 0, {"mid_save": 0, "mid_swap": 0, "restored": 0}
        for trial in range(trials):
            left = _kill_trial(directory, mode, next_step, n, rng.uniform(0.0, 1.0))
            what = f"{mode} trial {trial}"
            # What the kill interrupted: a save under its temporary name, or the
            # swap / deletion of an old checkpoint (renamed before it goes).
            counts["mid_save"] += any(layout.TMP_MARK in name for name in left)
            counts["mid_swap"] += any(layout.OLD_MARK in name for name in left)
            latest = js.latest_checkpoint(directory)
            check(latest is not None, f"{what}: no checkpoint after the kill")
            check(
                js.verify_checkpoint(latest) == sorted(js.flatten(expected_tree(0, 1))),
                f"{what}: {latest} does not verify",
            )
            step = int(js.load_variable(latest, "state/step"))
            # A blocking save is committed when "saved" is printed; an async
            # one is committed by the next save.
            lag = 1 if mode == "async" else 0
            check(step >= next_step - lag, f"{what}: latest is {latest}, an old one")
            expected = expected_tree(step, n)
            target = jax.tree.map(np.zeros_like, expected)
            check(
                same(js.Saver().restore(latest, target), expected),
                f"{what}: {latest} does not restore bit-exactly",
            )
            counts["restored"] += 1
            next_step = step + 1
        # The next save in the directory removes what the killed writers left.
        js.Saver().save(expected_tree(next_step, n), directory + "/model", next_step)
        leftovers = [f for f in os.listdir(directory) if layout.is_temporary(f)]
        check(not leftovers, f"{mode}: {leftovers} left after the next save")
        report.value(
            "fault",
            f"{mode}: kills / mid-save / mid-swap / restored",
            f"{trials} / {counts['mid_save']} / {counts['mid_swap']} / "
            f"{counts['restored']}",
        )
        total["trials"] += trials
        for k, v in counts.items():
            total[k] += v
    report.value(
        "fault",
        "latest checkpoint verified and restored bit-exactly",
        f"{total['restored']}/{total['trials']}",
    )
    print(
        f"FAULT trials={total['trials']} mid_save={total['mid_save']} "
        f"mid_swap={total['mid_swap']} restored={total['restored']}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run, seconds")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds")
    parser.add_argument(
        "--trials", type=int, default=None, help="SIGKILL trials per mode"
    )
    parser.add_argument("--dir", default=None, help="where to write (default: temp)")
    args = parser.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 15)
    trials = args.trials or (1 if args.quick else 17)  # per mode, three modes
    mib = 16 if args.quick else 256

    print(
        f"jax {jax.__version__} ({jax.default_backend()}), orbax-checkpoint "
        f"{ocp.__version__}, jscope {js.__version__}, python "
        f"{platform.python_version()}, {os.cpu_count()} CPUs"
    )
    workdir = tempfile.mkdtemp(prefix="bench_checkpoint_", dir=args.dir)
    report = Report()
    try:
        bench_throughput(report, workdir, rounds, mib)
        bench_fault(report, workdir, trials, 32 if not args.quick else 8)
    except CheckFailed as e:
        print(f"\nCHECK FAILED: {e}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print("\n" + report.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
