"""The example scripts run, and print what they promise."""

import importlib.util
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


def _load_seed_tour():
    spec = importlib.util.spec_from_file_location("seed_tour", SEED_TOUR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_seed_tour_table_without_rich(monkeypatch, capsys):
    module = _load_seed_tour()
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
