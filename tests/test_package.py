"""The package around the code: one version, lazy Orbax, the public names, floors."""

from __future__ import annotations

import re
import sys
import tomllib

import pytest
from helpers import ROOT, run_source
from packaging.requirements import Requirement

import jscope as js

LAZY = ["Saver", "list_variables", "load_variable", "verify_checkpoint", "tf1"]


def test_import_jscope_leaves_orbax_tensorstore_and_protobuf_unimported():
    out = run_source(
        "import sys, jscope\n"
        "print(sorted({m.split('.')[0] for m in sys.modules\n"
        "    if m.startswith(('orbax', 'tensorstore', 'google.protobuf'))}))"
    ).stdout
    assert out.strip() == "[]"


def test_first_use_of_a_checkpoint_name_imports_orbax():
    out = run_source(
        "import sys, jscope as js\n"
        "before = 'orbax.checkpoint' in sys.modules\n"
        "saver = js.Saver\n"
        "print(before, 'orbax.checkpoint' in sys.modules, saver.__name__)"
    ).stdout
    assert out.split() == ["False", "True", "Saver"]


@pytest.mark.parametrize("name", LAZY)
def test_lazy_names_are_the_real_objects_and_listed(name):
    from jscope import tf1  # noqa: PLC0415
    from jscope._src.checkpoint import read, saver  # noqa: PLC0415

    real = {
        "Saver": saver.Saver,
        "list_variables": read.list_variables,
        "load_variable": read.load_variable,
        "verify_checkpoint": read.verify_checkpoint,
        "tf1": tf1,
    }[name]
    assert getattr(js, name) is real
    assert name in dir(js)
    assert name in js.__all__ or name == "tf1"


def test_every_public_name_resolves():
    missing = [name for name in js.__all__ if not hasattr(js, name)]
    assert not missing


def test_every_public_annotation_resolves():
    # typing.get_type_hints on each public function, class and method: tools
    # that read annotations at run time (dataclass-like wrappers, FastAPI-style
    # validators, sphinx) must not meet a NameError or a str alias.
    import inspect
    import typing

    import jscope.initializers
    import jscope.layers
    import jscope.slim

    failed = {}
    for module in (js, jscope.layers, jscope.slim, js.tf1, jscope.initializers):
        for name in module.__all__:
            obj = getattr(module, name)
            if not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            members = inspect.getmembers(obj, inspect.isfunction)
            for target in [obj] + [m for _, m in members if inspect.isclass(obj)]:
                try:
                    typing.get_type_hints(target)
                except Exception as e:  # noqa: BLE001 (every failure is reported)
                    failed[f"{module.__name__}.{target.__qualname__}"] = repr(e)
    assert not failed


def test_an_unknown_attribute_is_an_attribute_error_naming_it():
    with pytest.raises(AttributeError, match="no attribute 'Sever'"):
        js.Sever  # noqa: B018


def test_the_version_has_one_source():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["name"] == "jscope-jax"
    assert "version" not in project["project"]
    assert project["project"]["dynamic"] == ["version"]
    attr = project["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    module, name = attr.rsplit(".", 1)
    assert getattr(sys.modules[module], name) == js.__version__
    assert js.__version__.count(".") == 2


# The lowest CI job installs with `-c` this file: the floors pyproject declares.
CONSTRAINTS = ROOT / ".github" / "constraints-lowest.txt"
PINNED = {
    "jax",
    "jaxlib",
    "orbax-checkpoint",
    "numpy",
    "optax",
    "flax",
    "dm-haiku",
    "equinox",
}


def _name(text: str) -> str:
    return re.sub(r"[-_.]+", "-", text).lower()


def _pins() -> dict[str, str]:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", line
            pins[_name(req.name)] = spec.version
    return pins


def _floors() -> dict[str, set[str]]:
    """``{name: {floor, ...}}`` over the dependencies and every extra."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        lines += extra
    floors: dict[str, set[str]] = {}
    for line in lines:
        req = Requirement(line)
        for spec in req.specifier:
            if spec.operator == ">=":
                floors.setdefault(_name(req.name), set()).add(spec.version)
    return floors


def test_constraints_pin_exactly_the_tested_floors():
    assert set(_pins()) == PINNED


def test_declared_floors_equal_the_lowest_jobs_pins():
    pins, floors = _pins(), _floors()
    for name, version in pins.items():
        assert floors.get(name) == {version}, (
            f"pyproject declares {name} >= {sorted(floors.get(name, []))}, "
            f"{CONSTRAINTS.name} pins {name}=={version}: change both together"
        )


def test_the_lowest_job_installs_with_the_constraints_and_runs_the_suite():
    workflow = (ROOT / ".github" / "workflows" / "ci.yml").read_text()
    job = workflow.split("\n  lowest:\n", 1)[1].split("\n  examples:", 1)[0]
    assert 'pip install -e ".[test]" -c .github/constraints-lowest.txt' in job
    assert "python .ci/check_pins.py .github/constraints-lowest.txt" in job
    assert "python -m pytest -n 2 -q" in job
