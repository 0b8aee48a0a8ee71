"""Shared test configuration: hypothesis profiles."""

import os

from hypothesis import HealthCheck, settings

# The default profile is thorough; "ci" is no weaker (same example counts, no
# deadline, since shared CI machines are noisy).
settings.register_profile(
    "default",
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "ci",
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
