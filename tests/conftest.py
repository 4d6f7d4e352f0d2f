"""Test-wide isolation: every test session gets its own state folder and Airflow home.

Set before anything imports Airflow or the pipelines settings, so nothing touches `.state/`.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
_STATE = Path(tempfile.mkdtemp(prefix="mlops-test-state-"))

os.environ["MLOPS_STATE_URI"] = str(_STATE)
os.environ["AIRFLOW_HOME"] = str(_STATE / "airflow")
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(REPO / "plugins")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "False"
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("MLOPS_SCHEDULE_START", None)
os.environ.pop("MLOPS_SCHEDULE_END", None)
(_STATE / "airflow").mkdir(parents=True, exist_ok=True)


def _restore_tracking_uri(before: str | None) -> None:
    if "mlflow" in sys.modules:
        from mlflow.tracking._tracking_service import utils

        utils._tracking_uri = before
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


@pytest.fixture(autouse=True, scope="module")
def _mlflow_tracking_uri_does_not_leak_out_of_a_module():
    """`mlflow.set_tracking_uri` (every registry client calls it) also exports
    MLFLOW_TRACKING_URI, and Settings reads that variable: a module-scoped fixture that built
    a registry would otherwise hand it to every later module. Set up before, torn down after,
    every other module-scoped fixture of the module."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    _restore_tracking_uri(before)


@pytest.fixture(autouse=True)
def _mlflow_tracking_uri_does_not_leak():
    """The same, per test: no test talks to another test's registry."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    _restore_tracking_uri(before)


# The longest files first. `make test` hands whole files to its workers (`--dist loadfile`) in
# collection order (`--no-loadscope-reorder`: by default pytest-xdist sorts them by their number
# of tests, which put the lifecycle and DVC files among the last), and a file that starts last
# is waited for alone: longest first keeps the workers busy to the end. Seconds of one file
# alone, CI run of 2026-12-06 (2 workers, 2 cores).
LONGEST_FIRST = (
    "tests/integration/test_stack.py",  # 504 s
    "tests/integration/test_ui_browser.py",  # 421 s
    "tests/integration/test_lifecycle.py",  # 153 s
    "tests/integration/test_second_dataset.py",  # 97 s
    "tests/integration/test_dvc_repro.py",  # 94 s
    "tests/component/test_registry_faults.py",  # 78 s
    "tests/integration/test_registry_gates.py",  # 70 s
    "tests/integration/test_object_store.py",  # 67 s
    "tests/component/test_monitoring.py",  # 62 s
)


def pytest_collection_modifyitems(config, items):  # noqa: ARG001 - pytest hook signature
    """Stable: the files above first, in that order; the rest, and every file's own tests, in
    the order they were collected (the browser tests share one session in file order)."""
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))


def pytest_sessionfinish(session, exitstatus):  # noqa: ARG001 - pytest hook signature
    """Remove the session's state folder unless asked to keep it for debugging."""
    import shutil

    if not os.environ.get("MLOPS_KEEP_TEST_STATE"):
        shutil.rmtree(_STATE, ignore_errors=True)
