"""The programs ``make test`` installs (its ``TEST_PACKAGES``): a test that needs one fails
when it is missing, it never skips, so a suite run without them cannot pass by doing less."""

from __future__ import annotations

import shutil

import pytest


def require(binary: str, *alternatives: str) -> str:
    """The path of ``binary`` (or the first of ``alternatives`` found); fails the test when
    none is installed."""
    for name in (binary, *alternatives):
        if (path := shutil.which(name)) is not None:
            return path
    pytest.fail(f"{binary} is not installed; `make test` installs it (make system-deps)",
                pytrace=False)
