"""TF1 checkpoint reading: js.tf1.load_checkpoint against the disk's own read rate.

A 256 MiB TF1 checkpoint (16 float32 arrays of 2048x2048, one data shard) is
written by ``js.tf1.save_checkpoint``; then, round after round, the contestants
read it:

- ``np.fromfile``: the data file's bytes in one call, no parsing, no checks;
  the rate the disk (or the page cache) delivers the same bytes at.
- ``js.tf1.load_checkpoint``: the index parsed, every tensor read into its
  array and checked against its masked CRC-32C.
- ``readinto`` (for reference): the same bytes read as jscope reads them, one
  ``np.empty`` array per tensor filled by ``readinto`` calls of at most 16 MiB,
  without parsing or checksums: what parsing and checking cost shows in its
  ratio, reported with no target. (``np.fromfile`` fills one fresh 256 MiB
  array, whose pages are all faulted in during the read; arrays of one tensor
  each are smaller, and the allocator reuses their memory from round to round.)

Two modes: ``cold`` evicts the data file from the page cache before each read
(``posix_fadvise(DONTNEED)`` on the file: the file's clean pages only, nothing
else), so both read from the disk; ``warm`` reads it again from the page cache.
The contestants alternate their order; each reports its median MB/s, and
the ratio is the median of the per-round ratios (target: at least 0.8).

Usage::

    python benchmarks/bench_tf1_checkpoint.py           # full run (about a minute)
    python benchmarks/bench_tf1_checkpoint.py --quick   # smoke run: 16 MiB

The script exits non-zero when a correctness check fails (an array read back
differs from the one saved). Missed timing targets are reported as FAIL but do
not change the exit code.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

os.environ["JAX_PLATFORMS"] = "cpu"

import numpy as np  # noqa: E402

import jscope as js  # noqa: E402
from jscope._src.tf1 import bundle  # noqa: E402  (the tensors' sizes)

TARGET = 0.8


class CheckFailed(Exception):
    """A correctness check of the benchmark failed."""


def evict(path: str) -> None:
    """Drops ``path``'s clean pages from the page cache (Linux; else a no-op)."""
    if hasattr(os, "posix_fadvise"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def read_into(path: str, sizes: list[int]) -> list[np.ndarray]:
    """The file's bytes, one array per tensor, by ``readinto`` of <= 16 MiB."""
    out = []
    with open(path, "rb", buffering=0) as f:
        for size in sizes:
            array = np.empty(size, np.uint8)
            view = memoryview(array)
            got = 0
            while got < size:
                n = f.readinto(view[got : got + (16 << 20)])
                if not n:
                    raise CheckFailed(f"{path} ended before the last tensor")
                got += n
            out.append(array)
    return out


def run(directory: str, arrays: int, side: int, rounds: int) -> bool:
    rng = np.random.default_rng(0)
    tree = {
        "params": {
            f"layer_{i}/w": rng.standard_normal((side, side), dtype=np.float32)
            for i in range(arrays)
        }
    }
    prefix = js.tf1.save_checkpoint(tree, os.path.join(directory, "model.ckpt-1"))
    data = prefix + ".data-00000-of-00001"
    size = os.path.getsize(data)
    mib = size / 2**20
    print(f"checkpoint: {arrays} float32 arrays of {side}x{side}, {mib:.0f} MiB")

    # Correctness first: every array read back bit for bit.
    loaded = js.tf1.load_checkpoint(prefix)
    for path, value in tree["params"].items():
        if loaded[path].tobytes() != value.tobytes():
            raise CheckFailed(f"{path} read back differs from what was saved")
    if np.fromfile(data, np.uint8).size != size:
        raise CheckFailed("np.fromfile read a different number of bytes")
    del loaded

    entries = sorted(bundle.read_index(prefix).entries.values(), key=lambda e: e.offset)
    sizes = [entry.size for entry in entries]
    contestants = {
        "np.fromfile": lambda: np.fromfile(data, np.uint8),
        "js.tf1.load_checkpoint": lambda: js.tf1.load_checkpoint(prefix),
        "readinto": lambda: read_into(data, sizes),
    }
    rows, ok = [], True
    for mode in ("cold", "warm"):
        rates: dict[str, list[float]] = {name: [] for name in contestants}
        ratios, ceiling = [], []
        for r in range(rounds):
            order = list(contestants) if r % 2 == 0 else list(contestants)[::-1]
            seconds = {}
            for name in order:
                if mode == "cold":
                    evict(data)
                else:
                    contestants[name]()  # the file in the page cache
                start = time.perf_counter()
                result = contestants[name]()
                seconds[name] = time.perf_counter() - start
                del result
                rates[name].append(size / 1e6 / seconds[name])
            ratios.append(seconds["np.fromfile"] / seconds["js.tf1.load_checkpoint"])
            ceiling.append(seconds["readinto"] / seconds["js.tf1.load_checkpoint"])
        for name, values in rates.items():
            rows.append(
                (f"read ({mode})", name, f"{statistics.median(values):.0f} MB/s")
            )
        ratio = statistics.median(ratios)
        verdict = "PASS" if ratio >= TARGET else "FAIL"
        ok &= ratio >= TARGET
        print(
            f"RATIO read {mode} js.tf1/np.fromfile = {ratio:.3f} "
            f"(target >= {TARGET:.2f}) {verdict}"
        )
        print(f"  per-round ratios: {', '.join(f'{x:.2f}' for x in ratios)}")
        rows.append((f"read ({mode})", "js.tf1/np.fromfile", f"{ratio:.3f}x"))
        info = statistics.median(ceiling)
        print(f"RATIO read {mode} js.tf1/readinto = {info:.3f} (info)")
        rows.append((f"read ({mode})", "js.tf1/readinto", f"{info:.3f}x"))
    print()
    print(f"{platform.machine()}, {os.cpu_count()} CPUs, {rounds} rounds per mode")
    print("| benchmark | contestant / ratio | median |")
    print("| --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 16 MiB")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per mode")
    parser.add_argument("--dir", default=None, help="where to write (default: temp)")
    args = parser.parse_args(argv)
    arrays, side = (4, 1024) if args.quick else (16, 2048)
    rounds = args.rounds or (3 if args.quick else 9)
    directory = tempfile.mkdtemp(prefix="bench-tf1-", dir=args.dir)
    try:
        run(directory, arrays, side, rounds)
    except CheckFailed as e:
        print(f"\nCHECK FAILED: {e}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
