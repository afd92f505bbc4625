"""Shared set-up for the firmware tests: the MicroPython VM must be present (never skipped)."""

from __future__ import annotations

import pytest

from tools import mpvm


@pytest.fixture(scope="session", autouse=True)
def _vm_present() -> None:
    # Fails every firmware test with the fix spelled out when node or the VM package is missing.
    mpvm.check_vm()
