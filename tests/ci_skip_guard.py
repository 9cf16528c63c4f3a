"""pytest plugin: under CI (environment variable CI=true), a skipped test other than a "no GPU" skip fails the run.

A skip because a dependency, compiler or data file is missing hides a missing feature; on the project's machines
everything the suite needs is installed by `make setup`, so the only legitimate skip is a GPU test on a CPU
machine. Such a test must give a reason that starts with "no GPU" (``pytest.mark.skipif(not
torch.cuda.is_available(), reason="no GPU")``). Skips at collection time (``pytest.importorskip``, module-level
``pytest.skip``) count too. Outside CI nothing changes. tests/conftest.py registers this module; .ci/run sets
CI=true.
"""
import os
from typing import List, Tuple

ALLOWED_PREFIX = "no GPU"


def ci_enabled() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def skip_reason(report) -> str:
    """The reason pytest recorded for a skip report ("Skipped: " prefix removed)."""
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return reason[len("Skipped: "):] if reason.startswith("Skipped: ") else reason


def allowed(reason: str) -> bool:
    return reason.startswith(ALLOWED_PREFIX)


class CISkipGuard:
    def __init__(self) -> None:
        self.forbidden: List[Tuple[str, str]] = []  # (node id, reason)

    def _record(self, report) -> None:
        if report.skipped and not hasattr(report, "wasxfail"):
            reason = skip_reason(report)
            if not allowed(reason):
                self.forbidden.append((report.nodeid, reason))

    def pytest_collectreport(self, report) -> None:
        self._record(report)

    def pytest_runtest_logreport(self, report) -> None:
        self._record(report)

    def pytest_sessionfinish(self, session, exitstatus) -> None:
        if self.forbidden and session.exitstatus in (0, 5):  # OK, or nothing ran (every test skipped)
            session.exitstatus = 1

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if not self.forbidden:
            return
        terminalreporter.section("skips are failures under CI (only 'no GPU' skips are allowed)", red=True)
        for nodeid, reason in self.forbidden:
            terminalreporter.line(f"FORBIDDEN SKIP {nodeid}: {reason}", red=True)


def register(config) -> None:
    """Register the guard when CI=true (called from tests/conftest.py's pytest_configure)."""
    if ci_enabled() and not config.pluginmanager.has_plugin("ci_skip_guard"):
        config.pluginmanager.register(CISkipGuard(), "ci_skip_guard")
