"""Find what a test needs on this machine: under CI a missing dependency fails, never skips."""

from __future__ import annotations

import os
import shutil

import pytest


def executable(name: str, *candidates: str) -> str:
    """Return the path of a program, or fail (in CI) or skip (elsewhere) when it is missing."""
    for candidate in (name, *candidates):
        path = shutil.which(candidate)
        if path:
            return path
    why = f"{name} is not installed (./scripts/test installs it)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(why)
    pytest.skip(why)
