"""``HYPOTHESIS_PROFILE`` scales the example count of every property test.

A probe test asking for ``examples(WEIGHT)`` runs in a fresh pytest process under
each profile, with this directory's ``conftest.py`` and ``helpers.py``, and counts
how often its body ran.
"""

import os
import pathlib
import subprocess
import sys

from helpers import PROFILES

TESTS = pathlib.Path(__file__).parent
WEIGHT = 1.5

PROBE = f"""
import os

from helpers import examples
from hypothesis import given, settings
from hypothesis import strategies as st


@settings(max_examples=examples({WEIGHT}), database=None)
@given(st.integers())
def test_probe(x):
    with open(os.environ["PROBE_OUT"], "a") as f:
        f.write("x\\n")
"""


def _run_probe(tmp_path: pathlib.Path, profile: str | None) -> int:
    """How many examples the probe ran under ``profile`` (None: no variable)."""
    (tmp_path / "test_probe.py").write_text(PROBE)
    (tmp_path / "pytest.ini").write_text("[pytest]\nfilterwarnings = error\n")
    out = tmp_path / f"calls-{profile}.txt"
    env = {k: v for k, v in os.environ.items() if k != "HYPOTHESIS_PROFILE"}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(TESTS), *filter(None, [env.get("PYTHONPATH")])]
    )
    env["PROBE_OUT"] = str(out)
    if profile is not None:
        env["HYPOTHESIS_PROFILE"] = profile
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "conftest",
            "-p",
            "no:cacheprovider",
        ]
        + ["-p", "no:xdist", "-c", str(tmp_path / "pytest.ini"), str(tmp_path)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return len(out.read_text().splitlines())


def test_profiles_scale_the_example_count(tmp_path):
    counts = {name: _run_probe(tmp_path, name) for name in PROFILES}
    assert counts == {name: round(base * WEIGHT) for name, base in PROFILES.items()}
    assert counts["dev"] < counts["ci"]
    assert counts["thorough"] >= 10 * counts["ci"]


def test_no_profile_is_ci(tmp_path):
    assert _run_probe(tmp_path, None) == round(PROFILES["ci"] * WEIGHT)
