"""Hypothesis profiles of the fuzz tests: "ci" (the default: a few seconds a property, the whole
folder well under a minute) and "long" (scripts/fuzz.py runs the properties again and again with
it until its minutes are spent)."""

from __future__ import annotations

import os
from datetime import timedelta

from hypothesis import HealthCheck, settings

# Generous deadlines: a shared 2-core machine runs other jobs meanwhile; a hang is what they catch.
settings.register_profile(
    "ci",
    max_examples=int(os.environ.get("RETRIEVE_FUZZ_EXAMPLES", "120")),
    deadline=timedelta(seconds=10),
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile(
    "long",
    max_examples=500,
    deadline=timedelta(seconds=10),
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile(os.environ.get("RETRIEVE_FUZZ_PROFILE", "ci"))
