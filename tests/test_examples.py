"""The example scripts run, and print what they promise."""

import importlib.util
import os
import pathlib
import re
import sys

import pytest
from helpers import run_script

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"
SEED_TOUR = EXAMPLES / "seed_tour.py"


@pytest.fixture(scope="module")
def seed_tour_output():
    return run_script(SEED_TOUR, timeout=120).stdout


def test_seed_tour_counts_to_ten(seed_tour_output):
    counts = re.findall(r"^   counter = (\d+)$", seed_tour_output, re.MULTILINE)
    assert counts == [str(i) for i in range(1, 11)]


@pytest.mark.parametrize(
    "line",
    [
        "v1.name = name1\n",
        "v2.name = name1_1\n",
        "params/n1/Variable ",
        "params/n1/Variable_1 ",
        "params/n1_1/Variable ",
        "params/n1_1/Variable_1 ",
        "params/n2/W ",
        "params/n2/b ",
        "jnp.array_equal(nn1, nn2) = True",
        "VariableExistsError",
        "Variable foo/v already exists",
        "VariableNotFoundError",
        "Variable foo/v does not exist",
        "reuse=True:               v1 == v is True",
        "scope.reuse_variables():  v1 == v is True",
        "saved to       model.ckpt\n",
        "checkpoint key state/counter    shape ()\n",
        "fresh counter    = 0\n",
        "restored counter = 10\n",
        "restored params/W equals the saved one: True\n",
        "restored from shapes only: counter = 10\n",
        "subset checkpoint holds [('my_counter', ())]\n",
        "my_counter restored into state/counter = 10\n",
        "params/W keeps the fresh tree's value: True\n",
    ],
)
def test_seed_tour_prints(seed_tour_output, line):
    assert line in seed_tour_output


def test_seed_tour_checkpoint_section_runs(seed_tour_output):
    section = seed_tour_output.split("3. Saving and restoring variables", 1)[1]
    section = section.split("\n4. ", 1)[0]
    assert "Placeholder" not in section and "not run yet" not in section
    keys = re.findall(r"^   checkpoint key (\S+)", section, re.MULTILINE)
    assert keys == ["params/W", "params/b", "state/counter"]  # sorted, every path


def test_seed_tour_sections_in_order(seed_tour_output):
    numbers = re.findall(r"^(\d)\. ", seed_tour_output, re.MULTILINE)
    assert numbers == [str(i) for i in range(1, 9)]


def test_seed_tour_table_lists_every_variable(seed_tour_output):
    table = seed_tour_output.split("Variables created during the tour", 1)[1]
    for path in ["counter", "name1_1", "n1_1/Variable_1", "n2/W", "foo/v3"]:
        assert re.search(rf"\b{re.escape(path)}\b", table), path
    assert re.search(r"\bcounter\b.*\bint32\b.*\bstate\b", table)
    assert re.search(r"\bn2/W\b.*\(784, 500\).*\bfloat32\b.*\bparams\b", table)


def _load(path, monkeypatch):
    """Imports an example as a module (its directory on sys.path, for ``_cli``)."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    # An example may set XLA_FLAGS as it is imported: undo that afterwards.
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, path.stem, module)  # dataclasses look it up
    spec.loader.exec_module(module)
    return module


def _load_seed_tour(monkeypatch):
    return _load(SEED_TOUR, monkeypatch)


def test_seed_tour_table_without_rich(monkeypatch, capsys):
    module = _load_seed_tour(monkeypatch)
    for name in ("rich", "rich.console", "rich.table"):
        monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError
    rows = [
        ("1", "counter", "()", "int32", "state"),
        ("6", "n2/W", "(784, 500)", "float32", "params"),
    ]
    module.print_table(rows)
    lines = capsys.readouterr().out.splitlines()
    assert lines.pop(0) == "Variables created during the tour"
    assert lines[0].split() == ["section", "path", "shape", "dtype", "collection"]
    assert lines[2].split() == ["1", "counter", "()", "int32", "state"]
    assert lines[3].split() == ["6", "n2/W", "(784,", "500)", "float32", "params"]
    # Columns are aligned: each column starts at the same offset on every line.
    for header in ("path", "dtype", "collection"):
        col = lines[0].index(header)
        assert all(line[col - 1] == " " and line[col] != " " for line in lines[2:])


# ---------------------------------------------------------------- --help

# Every example builds its options with `_cli.parser`.
CLI_EXAMPLES = [
    "char_rnn.py",
    "digits_cnn.py",
    "port_tf1.py",
    "seed_tour.py",
    "sharded_training.py",
]


def _help_entries(text):
    """``{option: help text}`` of every option in an argparse --help text."""
    entries, current = {}, None
    for line in text.split("options:", 1)[1].splitlines():
        if line.startswith("  -"):
            invocation, _, rest = line.strip().partition("  ")
            current = invocation.split(",")[-1].split()[0]  # the long name
            entries[current] = rest.strip()
        elif line.startswith("   ") and current is not None:
            entries[current] += " " + line.strip()
        elif line.strip():
            current = None  # an epilog or another section
    return entries


@pytest.mark.parametrize("name", CLI_EXAMPLES)
def test_help_shows_a_help_text_and_a_default_for_every_option(
    name, monkeypatch, capsys
):
    monkeypatch.setenv("COLUMNS", "100")
    module = _load(EXAMPLES / name, monkeypatch)
    with pytest.raises(SystemExit) as exit_:
        module.main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert module.__doc__
    description = module.__doc__.split("\n\n")[0].split()
    assert " ".join(description) in " ".join(text.split())  # the docstring's first
    entries = _help_entries(text)
    assert "--help" in entries
    del entries["--help"]
    if name == "seed_tour.py":
        assert entries == {}  # the tour has no options
    else:
        assert len(entries) >= 3, text
    for option, help_text in entries.items():
        words = re.sub(r"\(default: [^)]*\)", "", help_text).split()
        assert words, f"{name} {option} has no help text:\n{text}"
        match = re.search(r"\(default: ([^)]*)\)", help_text)
        assert match and match.group(1).strip(), (
            f"{name} {option} shows no default:\n{text}"
        )
        assert "None" not in match.group(1), f"{name} {option}: {help_text}"


def test_help_entries_parser_finds_a_missing_default():
    text = (
        "usage: x\n\noptions:\n  -h, --help  show this help message and exit\n"
        "  --steps STEPS  training steps\n  --seed SEED\n"
        "  --lr LR        a very long help text that argparse\n"
        "                 wraps (default: 0.1)\n"
    )
    assert _help_entries(text) == {
        "--help": "show this help message and exit",
        "--steps": "training steps",
        "--seed": "",
        "--lr": "a very long help text that argparse wraps (default: 0.1)",
    }


# --------------------------------------------------------------- progress


@pytest.fixture
def cli(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    return importlib.import_module("_cli")


def _block(monkeypatch, *modules):
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError


def _drive(bar):
    with bar:
        for step in range(1, 5):
            bar.update(step, loss=1 / step)
            bar.write(f"line {step}")


def test_progress_is_richs_bar_with_the_loss_on_a_terminal(cli, capsys):
    bar = cli.progress(4, label="training", terminal=True)
    assert type(bar).__name__ == "_RichBar"
    _drive(bar)
    out = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", capsys.readouterr().out)  # colours
    assert re.search(r"training ━+ 4/4 loss 0\.2500 ", out), out
    assert [line for line in re.findall(r"line \d", out)] == [
        f"line {i}" for i in range(1, 5)
    ]


def test_progress_falls_back_to_tqdm_without_rich(cli, monkeypatch, capsys):
    _block(monkeypatch, "rich", "rich.progress")
    bar = cli.progress(4, label="training", terminal=True)
    assert type(bar).__name__ == "_TqdmBar"
    _drive(bar)
    captured = capsys.readouterr()
    assert re.search(r"training: 100%.* 4/4 .*loss 0\.2500", captured.err), captured
    assert captured.out == "".join(f"line {i}\n" for i in range(1, 5))


def test_progress_without_rich_or_tqdm_writes_only_the_lines(cli, monkeypatch, capsys):
    _block(monkeypatch, "rich", "rich.progress", "tqdm")
    bar = cli.progress(4, terminal=True)
    assert type(bar) is cli.Bar
    _drive(bar)
    captured = capsys.readouterr()
    assert captured.out == "".join(f"line {i}\n" for i in range(1, 5))
    assert captured.err == ""


@pytest.mark.parametrize("kwargs", [{}, {"show": False}, {"terminal": False}])
def test_progress_draws_no_bar_off_a_terminal_or_when_hidden(cli, capsys, kwargs):
    _drive(cli.progress(4, **kwargs))  # capsys's streams are not terminals
    captured = capsys.readouterr()
    assert captured.out == "".join(f"line {i}\n" for i in range(1, 5))
    assert captured.err == ""


def test_progress_shows_several_fields_in_their_formats(cli):
    bar = cli.progress(3, formats={"loss": "loss {:.3f}", "acc": "acc {:.1%}"})
    assert bar.status({"loss": 0.12345, "acc": 0.5}) == "loss 0.123  acc 50.0%"


# ----------------------------------------------------------------- Ctrl-C


def test_interrupted_says_where_to_resume_from(cli, capsys):
    assert cli.interrupted("step 123", "step 100") == 130
    assert cli.interrupted("step 3", None) == 130
    assert capsys.readouterr().err.splitlines() == [
        "interrupted at step 123; rerun with --resume to continue from step 100",
        "interrupted at step 3, before the first checkpoint; rerun to start again",
    ]


def test_run_turns_an_unhandled_ctrl_c_into_one_line_and_exit_130(cli, capsys):
    def main(argv):
        assert argv is None
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exit_:
        cli.run(main)
    assert exit_.value.code == 130
    assert capsys.readouterr().err == "interrupted\n"
    with pytest.raises(SystemExit) as exit_:
        cli.run(lambda argv: 0)
    assert exit_.value.code == 0
