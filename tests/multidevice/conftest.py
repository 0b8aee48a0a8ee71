"""Tests on 8 simulated CPU devices (see ``tests/test_multidevice.py``).

These files run only in a pytest process started with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` and
``JSCOPE_MULTIDEVICE=1``: ``tests/test_multidevice.py`` starts one per file.
"""

import jax
import pytest

DEVICES = 8


@pytest.fixture(scope="session", autouse=True)
def _eight_devices():
    found = jax.device_count()
    assert found == DEVICES, (
        f"these tests need {DEVICES} simulated CPU devices, found {found}: run them "
        "through tests/test_multidevice.py, or set "
        "XLA_FLAGS=--xla_force_host_platform_device_count=8 before jax is imported"
    )
