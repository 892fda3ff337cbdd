"""Find a program a test needs; a missing one fails the test, never skips it."""

from __future__ import annotations

import shutil

import pytest


def executable(name: str, *candidates: str) -> str:
    """Return the path of a program, or fail: ./scripts/test installs everything tests need."""
    for candidate in (name, *candidates):
        path = shutil.which(candidate)
        if path:
            return path
    pytest.fail(f"{name} is not installed (./scripts/test installs it)")
