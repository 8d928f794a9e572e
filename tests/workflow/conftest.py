"""Fixtures of the workflow tests: the job tests' project and session-wide simulations."""

from tests.jobs.conftest import project, simulated

__all__ = ["project", "simulated"]
