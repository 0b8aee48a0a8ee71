"""Smoke test: every benchmark runs end to end (``--quick``) and reports every line.

Each benchmark is one `Bench` of the table below: the lines its report must
contain (a missing line means a benchmark stopped running or stopped reporting)
and the checks its numbers must pass. Every script exits with 1 when one of its
own correctness checks fails, printing ``CHECK FAILED``; both are asserted for
all.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
from collections.abc import Callable

import pytest
from helpers import ROOT, run_script

TMP = "<tmp>"  # replaced by the test's temporary directory in `Bench.args`


@dataclasses.dataclass(frozen=True)
class Bench:
    """A benchmark script and what its quick run must report.

    Attributes:
      script: The file in ``benchmarks/``.
      args: Its arguments after ``--quick``; `TMP` stands for a fresh directory.
      lines: Substrings its stdout must contain.
      check: ``check(stdout, out, tmp)`` with ``out`` stdout and stderr together
        and ``tmp`` the directory given as `TMP`: further assertions.
      timeout: Seconds before the run counts as hung.
    """

    script: str
    args: tuple[str, ...] = ()
    lines: tuple[str, ...] = ()
    check: Callable[[str, str, pathlib.Path], None] | None = None
    timeout: float = 300


# --------------------------------------------------------------------- core
# Exit code 1: contestants disagreeing on outputs or shapes, or jscope's jitted
# step compiling to different HLO.


def _core(stdout: str, out: str, tmp: pathlib.Path) -> None:
    # The HLO comparison ran and found equal flops and instruction counts.
    assert "| jit_step | flops (jscope, hand) |" in stdout
    assert "| jit_step | HLO instructions (jscope, hand) |" in stdout


CORE = Bench(
    "bench_core.py",
    lines=(
        "RATIO init_trace jscope/haiku = ",
        "RATIO init_trace jscope/flax core = ",
        "RATIO apply_eager jscope/hand-written = ",
        "RATIO jit_step jscope/hand-written = ",
        "RATIO get_variable reads jscope/hand-written = ",
        "RATIO apply_eager jscope/hand-written (thread CPU time) = ",
        "RATIO apply_eager hand-written again/hand-written (A/A) = ",
        "RATIO apply_eager equinox/hand-written = ",
        "RATIO apply_eager scoped reads, no rules/hand-written (floor) = ",
        "RATIO apply_eager jscope/scoped reads, no rules = ",
        "BOUND get_variable_call jscope (CPU time) = ",
        "BOUND get_variable_call jscope, no plan (CPU time) = ",
    ),
    check=_core,
)

# --------------------------------------------------------------- checkpoint
# Exit code 1: a restored tree differed from the saved one, or a killed save
# (sync, async or overwriting) left no checkpoint that verifies and restores
# bit-exactly.


def _checkpoint(stdout: str, out: str, tmp: pathlib.Path) -> None:
    fault = re.search(
        r"^FAULT trials=(\d+) mid_save=\d+ mid_swap=\d+ restored=(\d+)$",
        stdout,
        re.M,
    )
    assert fault and fault.group(1) == fault.group(2) == "3", out
    assert os.listdir(tmp) == []  # the script cleans up after itself


CHECKPOINT = Bench(
    "bench_checkpoint.py",
    args=("--dir", TMP),
    lines=(
        "RATIO save jscope/orbax throughput = ",
        "RATIO restore jscope/orbax throughput = ",
        "BLOCK nonblocking js.Saver save(blocking=False) = ",
        "| save | jscope (js.Saver) | ",
        "| restore | orbax (StandardCheckpointer) | ",
        "COST save integrity share of the call = ",
        "COST restore integrity share of the call = ",
        "| fault | overwrite: kills / mid-save / mid-swap / restored | ",
    ),
    check=_checkpoint,
)

# ------------------------------------------------------------------- layers
# Exit code 1: a contestant's variables, loss, updated params or moving
# averages differ, or the compiled steps no longer do the same arithmetic.

MATCHED = ["jscope", "flax linen", "haiku", "hand-written"]
STOCK = ["flax linen (stock BatchNorm)", "haiku (stock BatchNorm, hk.dropout)"]


def _flops(output):
    rows = re.findall(
        r"^\| train_step \| flops (.+?) \| (\d+) \(([+-]\d+)\), (\d+) HLO instructions",
        output,
        re.MULTILINE,
    )
    return {name: (int(f), int(diff), int(n)) for name, f, diff, n in rows}


def _layers(output: str, out: str, tmp: pathlib.Path) -> None:
    # The checks ran before timing.
    assert re.search(r"flax, haiku and jscope make the same 14 variables", output)
    assert "agree with the hand-written step for every contestant" in output

    # jscope compiles to the hand-written step.
    flops = _flops(output)
    assert set(flops) == set(MATCHED + STOCK), output
    js_flops, diff, js_hlo = flops["jscope"]
    assert js_flops > 0 and diff == 0 and js_hlo > 0
    assert flops["hand-written"] == flops["jscope"]
    for name in ("flax linen", "haiku"):  # only their dropout keys may differ
        assert abs(flops[name][0] - js_flops) < 64 * 10, flops
    for f, d, _ in flops.values():
        assert f - js_flops == d

    # Every contestant's step time and ratio to the fastest are reported.
    for name in MATCHED + STOCK:
        time_row = rf"^\| train_step \| {re.escape(name)} \| [0-9.]+ us/step \|"
        assert re.search(time_row, output, re.MULTILINE), output
        ratio = re.search(
            rf"^RATIO train_step {re.escape(name)}/fastest \((.+?)\) = ([0-9.]+) (.*)$",
            output,
            re.MULTILINE,
        )
        assert ratio, output
        fastest, value, verdict = ratio.groups()
        assert fastest in MATCHED
        assert float(value) > 0
        if name == "jscope":
            assert re.fullmatch(r"\(target <= 1\.02\) (PASS|FAIL)", verdict)
        else:
            assert verdict == "(info)"

    # The fastest has ratio one.
    fastest = re.search(r"^RATIO train_step jscope/fastest \((.+?)\)", output, re.M)
    line = re.search(
        rf"^RATIO train_step {re.escape(fastest.group(1))}/fastest \(.+?\) = "
        r"([0-9.]+)",
        output,
        re.MULTILINE,
    )
    assert float(line.group(1)) == 1.0

    # The summary of a thousand variables is timed.
    line = re.search(r"^SUMMARY 1000 variables = ([0-9.]+) ms", output, re.M)
    assert line, output
    assert float(line.group(1)) > 0


LAYERS = Bench("bench_layers.py", check=_layers)

# --------------------------------------------------------------------- scan
# Exit code 1: a contestant's loss or gradients differ from the plain jax.numpy
# loop, or its params' shapes.

CONTESTANTS = [
    "js.scan",
    "unrolled",
    "flax nn.scan",
    "haiku layer_stack",
    "hand-written lax.scan",
]
SCAN_RATIOS = (
    "RATIO compile js.scan 64/4 = ",
    "RATIO compile unrolled 64/4 = ",
    "RATIO compile flax nn.scan 64/4 = ",
    "RATIO compile haiku layer_stack 64/4 = ",
    "RATIO compile js.scan/unrolled at 64 = ",
    "RATIO compile js.scan/flax nn.scan at 64 = ",
    "RATIO hlo js.scan/hand-written lax.scan at 64 = ",
    "RATIO step js.scan/unrolled depth 16 = ",
)


def _scan(stdout: str, out: str, tmp: pathlib.Path) -> None:
    for line in SCAN_RATIOS:
        value = re.search(re.escape(line) + r"([0-9.]+)", stdout)
        assert value and float(value.group(1)) > 0, line

    # The numerics check ran at every depth, for every contestant.
    for depth in (4, 16, 64):
        assert re.search(rf"depth +{depth}: loss js\.scan [0-9.]+, unrolled", out)

    # The compile table has one row per depth and contestant, and js.scan's
    # compiled step does not grow with depth while the unrolled one does.
    hlo, before = {}, {}
    for depth in (4, 16, 64):
        for name in CONTESTANTS:
            row = re.search(
                rf"^\| {depth} \| {re.escape(name)} (\| \d+ ){{4}}"
                r"\| (\d+) \| (\d+) \|$",
                stdout,
                re.MULTILINE,
            )
            assert row, f"no compile row for {name} at depth {depth}:\n{out}"
            hlo[depth, name] = int(row.group(2))
            before[depth, name] = int(row.group(3))
    assert hlo[4, "js.scan"] == hlo[16, "js.scan"] == hlo[64, "js.scan"]
    assert hlo[4, "unrolled"] < hlo[16, "unrolled"] < hlo[64, "unrolled"]
    # js.scan hands the stacks to lax.scan as xs: the same program as by hand.
    for depth in (4, 16, 64):
        assert hlo[depth, "js.scan"] == hlo[depth, "hand-written lax.scan"]
        assert before[depth, "js.scan"] == before[depth, "hand-written lax.scan"]
    assert re.search(r"^\| js\.scan \| (\d+ \| ){4}[0-9.]+x \| ", stdout, re.M)


SCAN = Bench("bench_scan.py", lines=SCAN_RATIOS, check=_scan)

# ---------------------------------------------------------- tf1 checkpoint
# Exit code 1: an array read back by js.tf1.load_checkpoint differs from the
# one saved.


def _tf1_checkpoint(stdout: str, out: str, tmp: pathlib.Path) -> None:
    for mode in ("cold", "warm"):
        ratio = re.search(
            rf"^RATIO read {mode} js\.tf1/np\.fromfile = ([0-9.]+) "
            r"\(target >= 0\.80\) (PASS|FAIL)$",
            stdout,
            re.M,
        )
        assert ratio and float(ratio.group(1)) > 0, out
        for name in ("np.fromfile", "js.tf1.load_checkpoint", "readinto"):
            row = rf"^\| read \({mode}\) \| {re.escape(name)} \| [0-9]+ MB/s \|$"
            assert re.search(row, stdout, re.M), out
    assert os.listdir(tmp) == []  # the script cleans up after itself


TF1_CHECKPOINT = Bench(
    "bench_tf1_checkpoint.py",
    args=("--dir", TMP),
    lines=("checkpoint: 4 float32 arrays of 1024x1024, 16 MiB",),
    check=_tf1_checkpoint,
)

# ----------------------------------------------------------------- sharding
# Exit code 1: the compiled sharded init's outputs are not the rules' shardings,
# its values differ from the unsharded init's, or the 8-device train step's loss
# differs from the 1-device step's.

SHARDING_RATIOS = (
    "RATIO memory held/whole x N (2x4, N=4) = ",
    "RATIO memory peak/whole x N (2x4, N=4) = ",
    "RATIO memory peak/unsharded peak x N (2x4, N=4) = ",
    "RATIO init_trace rules/no rules = ",
    "RATIO train_step 8 devices/1 device = ",
)


def _sharding(stdout: str, out: str, tmp: pathlib.Path) -> None:
    ratios = {}
    for line in SHARDING_RATIOS:
        value = re.search(re.escape(line) + r"([0-9.]+)", stdout)
        assert value and float(value.group(1)) > 0, line
        ratios[line] = float(value.group(1))
    # One device holds about a quarter of the model after the sharded init (the
    # quick model's replicated norms and position table weigh a few per cent),
    # and its peak is about a quarter of the unsharded init's.
    assert ratios[SHARDING_RATIOS[0]] < 1.25, stdout
    assert ratios[SHARDING_RATIOS[2]] < 1.25, stdout
    assert re.search(r"first-step loss: 1 device [0-9.]+, 8 devices [0-9.]+", stdout)


SHARDING = Bench("bench_sharding.py", lines=SHARDING_RATIOS, check=_sharding)

# ------------------------------------------------------------------- import
# Exit code 1: `import jscope` imported Orbax, TensorStore or protobuf.

IMPORT = Bench(
    "bench_import.py",
    lines=(
        "RATIO import jscope/jax = ",
        "CHECK import jscope loads none of orbax, tensorstore, google.protobuf",
    ),
)

# --------------------------------------------------------------------- init
# Exit code 1: the libraries' models differ in their number of variables or
# their sizes.

INIT_MODELS = ("unet", "transformer", "digits")
INIT_LIBRARIES = ("jscope", "flax linen", "haiku", "equinox")


def _init(stdout: str, out: str, tmp: pathlib.Path) -> None:
    # Every model and library was timed (the quick run: a process per library).
    for model in INIT_MODELS:
        for library in INIT_LIBRARIES:
            row = rf"^\| {model} \| {re.escape(library)} \| ([0-9.]+) \| [0-9.]+ \|"
            time = re.search(row, stdout, re.M)
            assert time and float(time.group(1)) > 0, f"{model}/{library}:\n{out}"
        ratio = re.search(
            rf"^RATIO cold init {model} jscope/fastest peer \((.+?)\) = ([0-9.]+) ",
            stdout,
            re.M,
        )
        assert ratio and ratio.group(1) in INIT_LIBRARIES[1:], out
        assert float(ratio.group(2)) > 0


INIT = Bench(
    "bench_init.py",
    lines=tuple(f"RATIO cold init {m} jscope/fastest peer (" for m in INIT_MODELS),
    check=_init,
    # Four cold processes (one per library, all three models), one at a time,
    # each compiling its library's kernels: about 55 s alone, longer beside the
    # rest of the suite.
    timeout=900,
)

# ------------------------------------------------------------------- checks
# Exit code 1: a copy with checks cut could not be made (the replay's source
# moved away from the cuts) or a contestant's output differed from jscope's.

CHECKS = Bench(
    "bench_checks.py",
    lines=tuple(
        f"RATIO apply_eager {name}/hand-written = "
        for name in (
            "jscope",
            "scoped reads, no rules",
            "no scope checks",
            "no read argument checks",
            "no read value checks",
            "no checks",
        )
    ),
)

BENCHES = {
    "core": CORE,
    "checks": CHECKS,
    "import": IMPORT,
    "checkpoint": CHECKPOINT,
    "layers": LAYERS,
    "scan": SCAN,
    "tf1_checkpoint": TF1_CHECKPOINT,
    "sharding": SHARDING,
    "init": INIT,
}


def test_every_benchmark_script_is_in_the_table():
    scripts = {p.name for p in (ROOT / "benchmarks").glob("bench_*.py")}
    assert scripts == {bench.script for bench in BENCHES.values()}


@pytest.mark.parametrize("bench", list(BENCHES.values()), ids=list(BENCHES))
def test_quick_run_reports_every_line(bench: Bench, tmp_path: pathlib.Path):
    args = [str(tmp_path) if a == TMP else a for a in bench.args]
    proc = run_script(
        ROOT / "benchmarks" / bench.script, "--quick", *args, timeout=bench.timeout
    )
    out = proc.stdout + proc.stderr
    assert "CHECK FAILED" not in out
    missing = [line for line in bench.lines if line not in proc.stdout]
    assert not missing, f"missing lines {missing} in:\n{out}"
    if bench.check is not None:
        bench.check(proc.stdout, out, tmp_path)
