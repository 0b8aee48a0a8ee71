"""What a replayed apply's checks cost: ``apply_eager`` with some checks removed.

A replayed `js.apply` (design §2.8) checks every event against its plan: a
scope's arguments; a read's arguments and the JAX trace; the array it returns
(type, dtype, shape). Each check is what makes the replay give what the
ordinary path gives, errors included. This script measures what they cost, by
building copies of the installed jscope with checks cut out of the source (each
copy imported under its own name, so all run in one process) and timing the
``apply_eager`` model of `bench_core` with each, interleaved round by round
with jscope as it is, the floor of a scoped API (`bench_core.FloorScopes`) and
hand-written JAX.

The copies are measuring instruments, not libraries: with checks cut they
return wrong values or no error where jscope raises. Nothing imports them but
this script, and they live in a temporary directory for its run.

Variants:

- ``no scope checks``: `variable_scope` checks none of its arguments when it is
  made, and a replayed entry does not compare them with the plan's.
- ``no read argument checks``: a replayed read compares none of its arguments
  with the plan's and does not check the JAX trace.
- ``no read value checks``: a replayed read returns the array without checking
  its type, dtype and shape.
- ``no checks``: all three.

Usage::

    python benchmarks/bench_checks.py                 # 3 fresh processes
    python benchmarks/bench_checks.py --processes 5   # as in benchmarks/README.md
    python benchmarks/bench_checks.py --quick         # smoke run (seconds)

Exits with 1, printing ``CHECK FAILED``, when a copy cannot be made (the source
moved: the cuts below name the exact text they remove) or a contestant's output
differs from jscope's.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent

# (file, first line of the cut, first line kept after it, replacement).
_SCOPE_INIT = (
    "_src/scope.py",
    "        auxiliary_name_scope: bool = True,\n    ):\n",
    "        self._saved_counts = None\n",
    "        auxiliary_name_scope: bool = True,\n    ):\n",
)
_SCOPE_ENTER = (
    "_src/scope.py",
    "                and obj == event[1]\n",
    "            ):\n                plan.next = event[6]\n",
    "",
)
_READ_ARGS = (
    "_src/variables.py",
    "            and (name is event[1] or",
    "        ):\n            # The leaf in its dict",
    "",
)
_READ_VALUE = (
    "_src/variables.py",
    "            if type(value) is ARRAY_IMPL:\n",
    "        return plan.read(\n",
    "            plan.next = event[11]\n            return value\n",
)
VARIANTS = {
    "no scope checks": (_SCOPE_INIT, _SCOPE_ENTER),
    "no read argument checks": (_READ_ARGS,),
    "no read value checks": (_READ_VALUE,),
    "no checks": (_SCOPE_INIT, _SCOPE_ENTER, _READ_ARGS, _READ_VALUE),
}


class CheckFailed(Exception):
    """A copy could not be made, or a contestant's output differs."""


def _cut(text: str, start: str, stop: str, replacement: str, where: str) -> str:
    """``text`` with the part from ``start`` up to (not including) ``stop``
    replaced by ``replacement``."""
    if text.count(start) != 1:
        raise CheckFailed(
            f"{where} has {text.count(start)} copies of the cut's "
            f"first line {start!r}, not one: the source moved; update the cuts."
        )
    i = text.index(start)
    j = text.find(stop, i)
    if j < 0:
        raise CheckFailed(
            f"{where} has no {stop!r} after {start!r}: the source "
            "moved; update the cuts."
        )
    return text[:i] + replacement + text[j:]


def make_copies(root: pathlib.Path) -> dict[str, str]:
    """Writes one copy of jscope per variant under ``root``: ``{variant: module}``."""
    import jscope

    source = pathlib.Path(jscope.__file__).parent
    modules = {}
    for k, (variant, cuts) in enumerate(VARIANTS.items()):
        module = f"jscope_ablated{k}"
        target = root / module
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        for path in target.rglob("*.py"):
            text = path.read_text()
            renamed = re.sub(r"\bfrom jscope([. ])", rf"from {module}\1", text)
            renamed = re.sub(r"\bimport jscope\b", f"import {module}", renamed)
            renamed = renamed.replace('"jscope.', f'"{module}.')
            if renamed != text:
                path.write_text(renamed)
        for file, start, stop, replacement in cuts:
            path = target / file
            where = f"{variant}: {file}"
            path.write_text(_cut(path.read_text(), start, stop, replacement, where))
        modules[variant] = module
    return modules


def measure(root: str, modules: dict[str, str], rounds: int, reps: int) -> dict:
    """One process: medians over rounds of each contestant's paired ratios."""
    import importlib

    sys.path.insert(0, str(HERE))
    sys.path.insert(0, root)
    import bench_core as b
    import jax
    import numpy as np

    import jscope as js

    n, d, batch = 10, 256, 32
    x = jax.random.normal(jax.random.key(1), (batch, d), b.F32)
    params = b.hand_init(jax.random.key(0), x, n)
    variables = {"params": params}

    def model_of(lib):
        def model(x):
            h = x
            for i in range(n):
                with lib.variable_scope(f"layer{i}"):
                    W = lib.get_variable("W", (d, d), initializer=b.LECUN)
                    bias = lib.get_variable("b", (d,), initializer=b.ZEROS)
                h = b._dense(h, W, bias, i == n - 1)
            return h

        return model

    def apply_of(lib):
        model = model_of(lib)
        return lambda: lib.apply(model, variables, x).block_until_ready()

    floor = b.FloorScopes(n)
    fns = {
        b.HAND: lambda: b.hand_apply(params, x, n).block_until_ready(),
        "jscope": apply_of(js),
        b.FLOOR: lambda: floor.apply(params, x).block_until_ready(),
    }
    for variant, module in modules.items():
        fns[variant] = apply_of(importlib.import_module(module))
    want = np.asarray(fns["jscope"]())
    for name, fn in fns.items():
        for _ in range(3):  # the first apply records the plan, the others replay
            got = np.asarray(fn())
        if not np.array_equal(got, want):
            raise CheckFailed(f"{name}'s output differs from jscope's")
    wall, cpu = b.interleaved_samples(fns, rounds, reps)
    return {
        "us": {name: statistics.median(wall[name]) * 1e6 for name in fns},
        "wall": {name: b.paired(wall, name, b.HAND) for name in fns if name != b.HAND},
        "cpu": {name: b.paired(cpu, name, b.HAND) for name in fns if name != b.HAND},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: seconds")
    parser.add_argument("--processes", type=int, default=None, help="default 3")
    parser.add_argument("--rounds", type=int, default=None, help="default 150")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 150)
    reps = 2 if args.quick else args.reps
    processes = args.processes or (1 if args.quick else 3)
    if args.child:
        root, modules = args.child[0], json.loads(args.child[1])
        try:
            print(json.dumps(measure(root, modules, rounds, reps)))
        except CheckFailed as e:
            print(f"CHECK FAILED: {e}", file=sys.stderr)
            return 1
        return 0
    with tempfile.TemporaryDirectory() as root:
        try:
            modules = make_copies(pathlib.Path(root))
        except CheckFailed as e:
            print(f"CHECK FAILED: {e}", file=sys.stderr)
            return 1
        runs = []
        for i in range(processes):
            command = [
                sys.executable, __file__, "--rounds", str(rounds),
                "--reps", str(reps), "--child", root, json.dumps(modules),
            ]  # fmt: skip
            proc = subprocess.run(command, capture_output=True, text=True)
            if proc.returncode:
                print(proc.stdout + proc.stderr, file=sys.stderr)
                return proc.returncode
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(f"process {i + 1}: " + ", ".join(
                f"{name} {ratio:.3f}" for name, ratio in runs[-1]["wall"].items()
            ))  # fmt: skip
    names = list(runs[0]["wall"])
    print(f"\napply_eager, {processes} processes, {rounds} rounds each; "
          "median over processes of each process's median paired ratio:")  # fmt: skip
    print(f"{'contestant':<28}{'us (wall)':>10}{'/hand wall':>12}{'/hand CPU':>11}"
          f"{'/jscope wall':>14}")  # fmt: skip
    for name in [c for c in runs[0]["us"] if c not in names] + names:
        us = statistics.median(r["us"][name] for r in runs)
        if name not in names:
            print(f"{name:<28}{us:>10.1f}")
            continue
        wall = statistics.median(r["wall"][name] for r in runs)
        cpu = statistics.median(r["cpu"][name] for r in runs)
        rel = statistics.median(r["wall"][name] / r["wall"]["jscope"] for r in runs)
        print(f"{name:<28}{us:>10.1f}{wall:>12.3f}{cpu:>11.3f}{rel:>14.3f}")
    print()
    for name in names:
        wall = statistics.median(r["wall"][name] for r in runs)
        print(f"RATIO apply_eager {name}/hand-written = {wall:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
