"""The public API type-checks: pyright accepts a user's script and rejects misuse.

`tests/typecheck/user_script.py` uses the public API as a user does and must
give no error, and so must `tests/typecheck/strict_script.py` under pyright's
strict mode (no value of unknown type); in `tests/typecheck/bad_script.py` each
wrong line ends in an ``expected error`` comment, and pyright must report
exactly those lines.
pyright comes with the ``test`` extra (``pyright[nodejs]`` brings its own
Node.js), so this test runs wherever the tests run.
"""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "tests" / "typecheck"
MARK = "# expected error"


def pyright(path: pathlib.Path) -> dict:
    """pyright's JSON report on ``path``, checked against this environment."""
    env = {**os.environ, "PYRIGHT_PYTHON_IGNORE_WARNINGS": "1"}
    cmd = [sys.executable, "-m", "pyright", "--outputjson"]
    cmd += ["--pythonpath", sys.executable, str(path)]
    done = subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.stdout.strip(), f"pyright printed nothing: {done.stderr}"
    report = json.loads(done.stdout)
    assert report["summary"]["filesAnalyzed"] >= 1, report
    return report


def _at_least(version: str, floor: tuple[int, int]) -> bool:
    return tuple(int(p) for p in version.split(".")[:2]) >= floor


def errors(report: dict) -> list[tuple[int, str]]:
    """``(line, message)`` of each error, lines counted from 1."""
    return [
        (d["range"]["start"]["line"] + 1, d["message"])
        for d in report["generalDiagnostics"]
        if d["severity"] == "error"
    ]


@pytest.fixture(scope="module")
def bad_report():
    return pyright(SCRIPTS / "bad_script.py")


def test_user_script_has_no_type_errors():
    found = errors(pyright(SCRIPTS / "user_script.py"))
    assert found == [], "\n".join(f"user_script.py:{n}: {m}" for n, m in found)


def test_strict_script_has_no_type_errors_under_strict_mode():
    script, control = SCRIPTS / "strict_script.py", SCRIPTS / "strict_jax_only.py"
    for path in (script, control):
        assert path.read_text().startswith("# pyright: strict\n")
    # At the lowest versions (tested by the lowest CI job) JAX's own signatures
    # hold unknown types; the control, the same JAX calls without jscope, says
    # which. Only those exact messages are accepted, and only unknown types.
    jaxs_own = {m for _, m in errors(pyright(control))}
    assert all("is partially unknown" in m for m in jaxs_own), jaxs_own
    if _at_least(jax.__version__, (0, 10)) and _at_least(np.__version__, (2, 4)):
        assert jaxs_own == set()  # complete types: the control accepts nothing
    found = [(n, m) for n, m in errors(pyright(script)) if m not in jaxs_own]
    assert found == [], "\n".join(f"strict_script.py:{n}: {m}" for n, m in found)


def test_strict_mode_reports_what_basic_mode_lets_pass(tmp_path):
    """The comment turns strict mode on: an unannotated function is an error."""
    body = "def f(x):\n    return x\n"
    (tmp_path / "basic.py").write_text(body)
    (tmp_path / "strict.py").write_text("# pyright: strict\n" + body)
    assert errors(pyright(tmp_path / "basic.py")) == []
    assert errors(pyright(tmp_path / "strict.py"))


def test_bad_script_errors_are_exactly_the_marked_lines(bad_report):
    lines = (SCRIPTS / "bad_script.py").read_text().splitlines()
    marked = {n for n, line in enumerate(lines, 1) if MARK in line}
    assert len(marked) >= 10  # the script keeps its known mistakes
    found = {n for n, _ in errors(bad_report)}
    assert found == marked, (
        f"missed: {sorted(marked - found)}, unexpected: {sorted(found - marked)}"
    )


def test_bad_script_errors_name_the_public_types(bad_report):
    """The messages speak of jscope.typing's aliases, not of ``Any``."""
    text = "\n".join(m for _, m in errors(bad_report))
    for alias in ("Initializer", "Reuse", "Shape"):
        assert alias in text, text


def test_public_api_is_typed_for_pyright_verifytypes():
    """Every symbol the package exports has a known type (pyright's measure)."""
    # pyright cannot follow an editable install's import hook: point it at the
    # source tree.
    env = {**os.environ, "PYRIGHT_PYTHON_IGNORE_WARNINGS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "pyright", "--outputjson", "--verifytypes"]
    cmd += ["jscope", "--ignoreexternal", "--pythonpath", sys.executable]
    done = subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    report = json.loads(done.stdout)["typeCompleteness"]
    unknown = [
        s["name"] for s in report["symbols"] if s["isExported"] and not s["isTypeKnown"]
    ]
    assert len(report["symbols"]) > 100, "pyright found no jscope package"
    assert report["completenessScore"] >= 0.95, unknown
