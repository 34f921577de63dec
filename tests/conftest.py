"""pytest configuration for netsip's tests."""

from __future__ import annotations

from hypothesis import HealthCheck, settings

# CI machines are small and noisy: no deadline, fixed example budget.
settings.register_profile(
    "netsip",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("netsip")
