"""Sessions: ``nox -s tests`` (test suite), ``nox -s demo`` (main job on real data), ``nox -s lint``, ``nox -s docs``,
``nox -s coverage`` and ``nox -s benchmarks -- <script>``."""

from __future__ import annotations

import os
from pathlib import Path

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
PYTHON = "3.11"
ROOT = Path(__file__).parent
SHARED_DATA = ROOT.parent / "shared" / "data"
#: pytest-xdist: one process per core up to four, a file's tests in one process (its fixtures built once).
PARALLEL = ["-q", "-n", "auto", "--maxprocesses", "4", "--dist", "loadfile"]


def _env() -> dict[str, str]:
    env = {"PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg"}
    # Real data beside the checkout (../shared/data) is used when present; otherwise scst downloads it.
    if "SCST_DATA_DIR" not in os.environ and SHARED_DATA.is_dir():
        env["SCST_DATA_DIR"] = str(SHARED_DATA)
    return env


def _install(session: nox.Session, extras: str) -> None:
    session.install("-e", f".[{extras}]")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Run the test suite (real data from ../shared/data when present).

    Test files run in parallel processes (pytest-xdist, one per core up to four; a file's tests stay in one process
    so its fixtures are built once). ``nox -s tests -- <pytest args>`` replaces these defaults.
    """
    _install(session, "test")
    session.run("pytest", *(session.posargs or PARALLEL), env=_env())


@nox.session(python=PYTHON, default=False)
def coverage(session: nox.Session) -> None:
    """The test suite with line and branch coverage of scst: a terminal report of the lines no test runs.

    Not part of ``nox -s tests`` (CI); ``nox -s coverage -- <pytest args>`` adds arguments (e.g. a test folder).
    """
    _install(session, "test")
    cov = ["--cov=scst", "--cov-branch", "--cov-report=term-missing:skip-covered"]
    session.run("pytest", *PARALLEL, *cov, *session.posargs, env=_env())


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """Run the main job end-to-end on the five HER2+ sections; outputs go to ``demo_output/``."""
    _install(session, "test")
    session.run("python", "scripts/demo.py", "--out", "demo_output", *session.posargs, env=_env())


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """Ruff lint and format check."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def benchmarks(session: nox.Session) -> None:
    """Run one benchmark script, e.g. ``nox -s benchmarks -- benchmarks/bench_patches.py``."""
    _install(session, "test")
    if not session.posargs:
        session.error("Name a script: nox -s benchmarks -- benchmarks/<script>.py [args]")
    session.run("python", *session.posargs, env=_env())


@nox.session(python=PYTHON, default=False)
def docs(session: nox.Session) -> None:
    """Build the HTML docs (warnings are errors) into ``docs/_build/html``; not part of ``nox -s tests``."""
    _install(session, "doc")
    session.run(
        "sphinx-build", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html", *session.posargs, env=_env()
    )
