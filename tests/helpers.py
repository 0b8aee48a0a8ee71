"""Helpers shared by the test modules (imported as ``helpers``).

``conftest.py`` puts this directory on ``sys.path``, so every test module,
``tests/layers/`` included, can ``from helpers import ...``.
"""

from __future__ import annotations

import os
import pathlib
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import settings

import jscope as js

ROOT = pathlib.Path(__file__).resolve().parents[1]

# ------------------------------------------------------------------ hypothesis

# Hypothesis profiles (registered in conftest.py): name -> base example count.
PROFILES = {"dev": 10, "ci": 200, "thorough": 2000}


def examples(weight: float) -> int:
    """``weight`` times the loaded hypothesis profile's base example count.

    Use it as ``@settings(max_examples=examples(4))``: the profile chosen with
    ``HYPOTHESIS_PROFILE`` (see ``conftest.py``) then scales the test.
    """
    return max(1, round(settings.default.max_examples * weight))


# ----------------------------------------------------------------------- trees

_ARRAYS = (jax.Array, np.ndarray, np.generic)


def assert_trees_equal(a: Any, b: Any, *, ordered: bool = True, exact: bool = True):
    """Asserts two trees are equal: nesting, keys, leaf dtypes, shapes and values.

    Dicts must have the same keys in the same order; lists and tuples the same
    type and length. Array leaves must agree in dtype, shape and every value
    (within ``rtol=1e-5, atol=1e-6`` if ``exact=False``); other leaves must be
    identical or ``==``. A failure names the path where the trees differ.

    Args:
      a: A tree (nested dicts, lists and tuples).
      b: Another.
      ordered: False to compare dict keys as sets: ``jax.jit``, ``jax.eval_shape``
        and Orbax hand back dicts with sorted keys.
      exact: False to compare floating values within a tolerance.
    """
    _assert_node(a, b, "", ordered, exact)


def _assert_node(a, b, path, ordered, exact):
    where = path or "<root>"
    if isinstance(a, Mapping) or isinstance(b, Mapping):
        assert isinstance(a, Mapping) and isinstance(b, Mapping), (where, a, b)
        keys_a, keys_b = (list(a), list(b)) if ordered else (sorted(a), sorted(b))
        assert keys_a == keys_b, (where, keys_a, keys_b)
        for k in a:
            _assert_node(a[k], b[k], f"{path}/{k}" if path else str(k), ordered, exact)
    elif isinstance(a, list | tuple) or isinstance(b, list | tuple):
        assert type(a) is type(b) and len(a) == len(b), (where, a, b)
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_node(x, y, f"{path}[{i}]", ordered, exact)
    elif isinstance(a, _ARRAYS) or isinstance(b, _ARRAYS):
        x, y = np.asarray(a), np.asarray(b)
        assert x.dtype == y.dtype, (where, x.dtype, y.dtype)
        assert x.shape == y.shape, (where, x.shape, y.shape)
        if exact:
            np.testing.assert_array_equal(x, y, err_msg=where)
        else:
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6, err_msg=where)
    else:
        assert a is b or a == b, (where, a, b)


def as_numpy(tree: Any) -> Any:
    """The tree with every leaf a NumPy array (a snapshot no run can change)."""
    return jax.tree.map(np.asarray, tree)


def dict_ids(tree: Mapping) -> dict[str, int]:
    """The ``id`` of every dict in a tree, keyed by its path (``""``: the root)."""
    out = {"": id(tree)}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update({f"{k}/{p}".rstrip("/"): i for p, i in dict_ids(v).items()})
    return out


def assert_no_shared_dicts(a: Mapping, b: Mapping) -> None:
    """Asserts no dict object appears in both trees."""
    assert set(dict_ids(a).values()).isdisjoint(dict_ids(b).values())


# --------------------------------------------------------------------- errors


def path_match(phrase: str, path: str) -> str:
    """A regex matching ``phrase`` and the full ``path`` in a message, any order.

    The path must stand alone: ``a/w`` does not match inside ``a/w_1`` or
    ``b/a/w``.
    """
    full = rf"(?<![\w./-]){re.escape(path)}(?![\w/-])"
    return rf"(?s)(?=.*{re.escape(phrase)})(?=.*{full})"


# -------------------------------------------------------------------- scripts


def run_script(script: str | os.PathLike, *args: Any, timeout: float = 300):
    """Runs a Python script of the repository on CPU; asserts it exits with 0.

    Args:
      script: The script's path, e.g. ``ROOT / "examples" / "seed_tour.py"``.
      *args: Its command-line arguments.
      timeout: Seconds before the run counts as hung.

    Returns:
      The `subprocess.CompletedProcess`, with text ``stdout`` and ``stderr``.
    """
    return _run_python([str(script), *map(str, args)], timeout)


def run_source(source: str, *args: Any, timeout: float = 300):
    """`run_script` for a program given as text (``python -c source *args``)."""
    return _run_python(["-c", source, *map(str, args)], timeout)


def _run_python(argv: list[str], timeout: float):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONIOENCODING": "utf-8"}
    proc = subprocess.run(
        [sys.executable, *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def bump_bn_statistics() -> None:
    """In scope ``bn``: ``mean`` (state, f32[2]) += 1 and ``count`` (i32) += 1."""
    with js.variable_scope("bn"):
        m = js.get_variable("mean", [2], trainable=False)
        js.assign(m, m + 1.0)
        c = js.get_variable("count", [], jnp.int32)
        js.assign_add(c, 1)


# The Saver's own line when Ctrl-C lands in a save, before the example's own line.
SAVE_NOTE = (
    "jscope: interrupted; finishing the checkpoint save to {} first "
    "(Ctrl-C again to abort it)"
)


def _sigint_when(
    proc: subprocess.Popen, ready: Callable[[str], bool]
) -> tuple[str, str]:
    """SIGINT once a stdout line passes ``ready``; exit code 130, no traceback.

    Returns the whole stdout and the stderr.
    """
    try:
        lines = []
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if ready(line):
                break
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    out = "".join(lines) + out
    assert proc.returncode == 130, out + err
    assert "Traceback" not in err, err
    return out, err


def interrupt_when(
    proc: subprocess.Popen, ready: Callable[[str], bool], prefix: str, unit: str
) -> tuple[str, int, int, list[str]]:
    """Sends SIGINT to an example once a stdout line passes ``ready``.

    Checks that it exits with code 130, no traceback, and one line "interrupted
    at <unit> N; rerun with --resume to continue from <unit> M", after at most the
    Saver's note for ``prefix`` (a save finishing first). Returns the whole stdout,
    N, M and the notes.
    """
    out, err = _sigint_when(proc, ready)
    *notes, line = err.splitlines()
    assert notes in ([], [SAVE_NOTE.format(prefix)]), err
    match = re.fullmatch(
        rf"interrupted at {unit} (\d+); rerun with --resume to continue from {unit} "
        r"(\d+)",
        line,
    )
    assert match, err
    at, saved = map(int, match.groups())
    return out, at, saved, notes


def interrupt_before_any_save(
    proc: subprocess.Popen, ready: Callable[[str], bool], unit: str
) -> tuple[str, int]:
    """Sends SIGINT to an example that saves nothing before its end.

    Once a stdout line passes ``ready``; checks exit code 130, no traceback and
    the one line "interrupted at <unit> N, before the first checkpoint; rerun to
    start again". Returns the whole stdout and N.
    """
    out, err = _sigint_when(proc, ready)
    match = re.fullmatch(
        rf"interrupted at {unit} (\d+), before the first checkpoint; rerun to "
        r"start again",
        err.strip(),
    )
    assert match, err
    return out, int(match.group(1))
