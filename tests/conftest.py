"""Shared test configuration: hypothesis profiles.

``HYPOTHESIS_PROFILE`` picks one; without it, ``ci`` is loaded. A profile sets
the *base* example count; a property test asks for ``helpers.examples(weight)``,
a multiple of that base, so every profile scales every test:

- ``dev``: base 10, for quick runs while editing.
- ``ci``: base 200, what CI runs (and the default).
- ``thorough``: base 2,000, ten times ``ci``, for nightly runs.
"""

import os

from helpers import PROFILES
from hypothesis import HealthCheck, settings

for _name, _base in PROFILES.items():
    settings.register_profile(
        _name,
        max_examples=_base,
        # Shared machines are noisy: no deadline, and slow data is no failure.
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        print_blob=True,
    )
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# The tests under multidevice/ need 8 simulated CPU devices, which XLA fixes when
# jax is first imported; `test_multidevice.py` runs each of their files in a
# pytest process of its own with the flag set. Collected here only inside such
# a process.
collect_ignore_glob = [] if os.environ.get("JSCOPE_MULTIDEVICE") else ["multidevice/*"]
