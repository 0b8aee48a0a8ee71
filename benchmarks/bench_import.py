"""Import time: ``import jscope`` against ``import jax``, each in a fresh process.

Round after round, two fresh interpreters are started in alternating order: one
runs ``import jax``, the other ``import jscope`` (which imports JAX first). Each
times its own import with ``time.perf_counter`` around the statement, so the
interpreter's start-up is left out. The ratio is the median of the per-round
ratios (target: at most 1.3).

``import jscope`` must not import Orbax, TensorStore or protobuf: they are only
needed by checkpoints (``js.Saver``) and TF1 checkpoints (``js.tf1``), which
import them on first use. The script checks this and exits non-zero when one of
them was imported. For where the time goes, run
``python -X importtime -c "import jscope"``.

Usage::

    python benchmarks/bench_import.py           # full run (15 rounds)
    python benchmarks/bench_import.py --quick   # smoke run: 3 rounds

Missed timing targets are reported as FAIL but do not change the exit code.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

TARGET = 1.3
LAZY = ("orbax", "tensorstore", "google.protobuf")

PROGRAM = """
import sys, time
start = time.perf_counter()
import {module}
took = time.perf_counter() - start
heavy = sorted({{m.split(".")[0] for m in sys.modules if m.startswith({lazy!r})}})
print(took, ",".join(heavy))
"""


def timed_import(module: str) -> tuple[float, str]:
    """Seconds ``import module`` takes in a fresh interpreter, and heavy modules."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    code = PROGRAM.format(module=module, lazy=LAZY)
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout.split()
    return float(out[0]), (out[1] if len(out) > 1 else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 rounds")
    parser.add_argument("--rounds", type=int, default=0, help="rounds (default 15)")
    args = parser.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 15)
    times: dict[str, list[float]] = {"jax": [], "jscope": []}
    ratios = []
    heavy = ""
    for r in range(rounds):
        order = ("jax", "jscope") if r % 2 == 0 else ("jscope", "jax")
        took = {}
        for module in order:
            took[module], loaded = timed_import(module)
            if module == "jscope":
                heavy = heavy or loaded
            times[module].append(took[module])
        ratios.append(took["jscope"] / took["jax"])
    for module, values in times.items():
        print(
            f"TIME import {module}: median {statistics.median(values) * 1e3:.0f} ms "
            f"(min {min(values) * 1e3:.0f}, max {max(values) * 1e3:.0f}, "
            f"{rounds} rounds)"
        )
    ratio = statistics.median(ratios)
    verdict = "ok" if ratio <= TARGET else "FAIL"
    print(f"RATIO import jscope/jax = {ratio:.3f} (target <= {TARGET}: {verdict})")
    if heavy:
        print(f"CHECK FAILED: import jscope imported {heavy}")
        return 1
    print("CHECK import jscope loads none of " + ", ".join(LAZY))
    return 0


if __name__ == "__main__":
    sys.exit(main())
