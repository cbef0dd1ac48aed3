"""The contract of the property tests: every generated input ends in a valid result or a clear error.

``contract(category, fn, *words)`` calls ``fn()``. A result is returned for the test to check its invariants; an
exception of an allowed type (``ValueError``, ``TypeError``, ``KeyError``, ``FileNotFoundError``) must name the
argument or the problem (one of ``words``, case-insensitive), otherwise the test fails; any other exception
(``IndexError``, ``ZeroDivisionError``, torch's ``RuntimeError``, numpy's ``LinAlgError``, …) and numpy's
``RuntimeWarning`` (a NaN or overflow produced on the way: the usual sign of a silent NaN result) propagate and
fail the test. Outcomes are tallied per category; with ``SCST_PROPERTY_TALLY=<file.json>`` the tally is written
at the end of the session (the case counts of docs/robustness.md come from it).
"""

from __future__ import annotations

import json
import os
import warnings
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pytest

ALLOWED = (ValueError, TypeError, KeyError, FileNotFoundError)
TALLY: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))


def _contract(category: str, fn: Callable[[], Any], *words: str, expect_error: bool = False) -> Any:
    """``fn()`` under the contract; returns its result, or ``None`` after a clear error."""
    assert words, "name the argument(s) an error must mention"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            out = fn()
    except ALLOWED as e:
        msg = str(e).lower()
        assert any(w.lower() in msg for w in words), f"{type(e).__name__} does not name any of {words}: {e}"
        TALLY[category]["clear error"] += 1
        return None
    assert not expect_error, f"{category}: expected a clear error naming {words}, got a result"
    TALLY[category]["result"] += 1
    return out


@pytest.fixture(scope="session")
def contract():
    """The contract checker (see the module docstring)."""
    return _contract


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("SCST_PROPERTY_TALLY")
    if path and TALLY:
        tally = {k: dict(v) for k, v in sorted(TALLY.items())}
        with open(path, "w") as fh:
            json.dump(tally, fh, indent=1)
