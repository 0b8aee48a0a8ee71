"""Runs each file of ``tests/multidevice/`` in a pytest process with 8 CPU devices.

XLA fixes the number of simulated host devices when jax is first imported, so
the multi-device tests cannot share a process with the rest of the suite (one
device). Each file gets its own process, so pytest-xdist spreads them over its
workers; a failure shows the tail of that process's output.
"""

import os
import pathlib
import subprocess
import sys

import pytest

HERE = pathlib.Path(__file__).parent
FILES = sorted(p.name for p in (HERE / "multidevice").glob("test_*.py"))
TIMEOUT_S = 900


def test_there_are_multidevice_tests():
    assert FILES, "tests/multidevice/ holds no test files"


@pytest.mark.parametrize("name", FILES)
def test_multidevice_file(name):
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["JSCOPE_MULTIDEVICE"] = "1"
    env.pop("PYTEST_XDIST_WORKER", None)
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:xdist",
        str(HERE / "multidevice" / name),
    ]
    try:
        proc = subprocess.run(
            cmd,
            cwd=HERE.parent,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as e:
        tail = (e.stdout or b"")[-6000:]
        pytest.fail(f"{name} did not finish in {TIMEOUT_S} s:\n{tail!r}")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{name} failed (rc {proc.returncode}):\n{out[-8000:]}"
    assert " passed" in out, out[-4000:]
