"""Fixtures for tests of sandboxed code (a plugin: ``pytest_plugins = ["sandbox_helpers"]``);
the plain helpers are in helpers.py.

bwrap mounts a run's directories as the sandbox's account, so every directory above them must
let other accounts pass; pytest's own temporary root (/tmp/pytest-of-root) is 0700.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import _roots


@pytest.fixture
def reachable_tmp() -> Iterator[Path]:
    """A fresh directory (0711) under /tmp, removed after the test."""
    root = Path(tempfile.mkdtemp(prefix="sbx-"))
    root.chmod(0o711)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def reachable_module_tmp() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="sbxm-"))
    root.chmod(0o711)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(autouse=True)
def _remove_sandbox_roots() -> Iterator[None]:
    """Remove the work roots :func:`helpers.sandbox_root` made during the test."""
    yield
    while _roots:
        shutil.rmtree(_roots.pop(), ignore_errors=True)
