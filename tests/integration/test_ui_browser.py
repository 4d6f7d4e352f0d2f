"""The Airflow UI end to end in headless Chromium: log in, DAG list, a run's grid, an extra link
and the model page, on a state made by a short real lifecycle run.

The state (a tmp folder) is produced in a subprocess by `dag.test()` runs, as in
test_lifecycle.py: training -> scoring three June nights -> drift checks (with `training`
unpaused, so the drift's retraining request is queued for it). Then `airflow standalone` serves
it on a free loopback port (not 8080: a demo may be using it), every DAG paused. First, through
the REST API as a person would: `training` is unpaused, the real scheduler starts the
retraining from the queued asset event, it waits for approval (`registry.approval: manual`) and
the admin approves it; a second training of the first window is triggered and the admin
rejects it (so there is a champion, a previous champion and a challenger). Then Selenium drives
the system Chromium through /usr/bin/chromedriver (Debian packages `chromium` and
`chromium-driver`) over the UI; screenshots go to test-artifacts/ui/. Every process started
here runs in its own process group and is killed with it, whatever happens.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from pipelines.core.embedded import embedded_env

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
# Where screenshots and logs go; scripts/screenshots.sh points it elsewhere.
ARTIFACTS = Path(os.environ.get("MLOPS_UI_ARTIFACTS") or REPO / "test-artifacts" / "ui")
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SCORED = ("2013-06-02", "2013-06-03", "2013-06-04")  # logical dates: the ends of June 1-3
TRAIN_WINDOW = {"start": "2013-01-01", "end": "2013-01-08"}
CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--disable-crash-reporter", "--disable-breakpad",
                "--window-size=1440,1000", "--hide-scrollbars")


# -- the state: a short lifecycle through dag.test(), in a subprocess with its own AIRFLOW_HOME --

def build_state(root: Path) -> None:
    """Runs in a child process whose environment points everything at `root`.

    A one-week model (floors lowered: this checks the UI, not the model), three scored June
    nights and drift checks of the last two, whose retraining request is queued for `training`.
    """
    import yaml

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["training"].update({"initial_window": dict(TRAIN_WINDOW), "window_days": 7,
                            "max_rows": 8000})
    raw["training"]["estimator"]["params"]["n_estimators"] = 20
    raw["gates"]["compare"]["n_bootstrap"] = 50
    raw["gates"]["floors"] = {"roc_auc": 0.5, "pr_auc": 0.05}
    # every training here must reach the approval step, where the person decides: the gates
    # are relaxed (the verdicts themselves are tested in tests/unit and test_registry_gates)
    raw["gates"]["budgets"] = {"max_single_row_p99_ms": 1000.0, "min_batch_rows_per_s": 100.0}
    raw["gates"]["behaviour"] = []
    raw["gates"]["slices"]["max_drop"] = 1.0
    raw["gates"]["compare"]["margin"] = -1.0
    raw["registry"]["approval"] = "manual"  # runs started by the scheduler wait for a person
    raw["drift"].update({"window_days": 2, "consecutive": 1})  # June 2 requests the retraining
    Path(os.environ["MLOPS_PARAMS"]).write_text(yaml.safe_dump(raw))

    from pipelines.core.config import load_config
    from pipelines.core.settings import get_settings
    from pipelines.data.ingest import ingest
    from pipelines.features.store import apply_definitions

    cfg, settings = load_config(os.environ["MLOPS_PARAMS"]), get_settings()
    ingest(cfg, settings.landing_uri, date(2013, 1, 1), date(2013, 1, 9))
    ingest(cfg, settings.landing_uri, date(2013, 5, 28), date(2013, 6, 4))
    airflow = str(Path(sys.executable).parent / "airflow")
    subprocess.run([airflow, "db", "migrate"], check=True, capture_output=True)
    subprocess.run([airflow, "pools", "set", "model_registry", "1", "alias moves"], check=True,
                   capture_output=True)
    apply_definitions(settings)

    from airflow.dag_processing.dagbag import DagBag
    from airflow.models import DagModel
    from airflow.utils.session import create_session

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert not bag.import_errors, f"DAG files do not import: {bag.import_errors}"
    dags = bag.dags
    runs: dict[str, str] = {}

    def run(dag_id: str, **kwargs) -> None:
        t0 = time.monotonic()
        dr = dags[dag_id].test(**kwargs)
        assert str(dr.state) == "success", f"{dag_id} run ended {dr.state}"
        runs.setdefault(dag_id, dr.run_id)
        print(f"build_state: {dag_id} {dr.run_id} in {time.monotonic() - t0:.0f}s", file=sys.stderr)

    window = {"train_start": TRAIN_WINDOW["start"], "train_end": TRAIN_WINDOW["end"]}
    run("training", run_conf={**window, "approval": "auto", "reason": "first model"})
    for day in SCORED:
        run("batch_scoring", logical_date=datetime.fromisoformat(day).replace(tzinfo=UTC))
    with create_session() as session:  # asset events are queued for unpaused consumers only
        session.get(DagModel, "training").is_paused = False
    for day in SCORED[1:]:
        run("drift_monitor", logical_date=datetime.fromisoformat(day).replace(tzinfo=UTC))
    with create_session() as session:  # nothing may start once the scheduler runs
        for model in session.query(DagModel).all():
            model.is_paused = True
    (root / "runs.json").write_text(json.dumps(runs))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(root: Path, port: int) -> dict[str, str]:
    """The embedded default's settings, read from scripts/env.sh (what `make demo` runs), on
    this test's state folder and port; one API worker, this test's params and poke interval."""
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("AIRFLOW__", "MLOPS_", "MLFLOW_"))}
    return embedded_env(
        base,
        before={"MLOPS_STATE_URI": str(root), "AIRFLOW_HOME": str(root / "airflow"),
                "AIRFLOW__API__PORT": str(port)},
        after={"MLOPS_PARAMS": str(root / "params.yaml"), "MLOPS_SENSOR_POKE_SECONDS": "5",
               "AIRFLOW__CORE__UNIT_TEST_MODE": "False", "AIRFLOW__API__WORKERS": "1",
               "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"})


def _stop(pid: int | None) -> None:
    """TERM, then KILL, the process group that `pid` leads (it was started in a new session)."""
    if pid is None:
        return
    for sig, wait in ((signal.SIGTERM, 25), (signal.SIGKILL, 5)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.waitpid(pid, os.WNOHANG)  # reap the leader if it is our child
            except ChildProcessError:
                pass
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.3)


@pytest.fixture(scope="module")
def browser_tools():
    """The system browser and driver: missing ones fail the test, with what to install."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: install the Debian packages chromium and "
                    f"chromium-driver (apt-get install chromium chromium-driver)", pytrace=False)
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.fail("selenium is not installed in the venv (requirements.in)", pytrace=False)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()


@pytest.fixture(scope="module")
def airflow_ui(browser_tools, tmp_path_factory):
    """(base URL, admin password, run ids) of an `airflow standalone` on the lifecycle state."""
    root = tmp_path_factory.mktemp("ui-browser")
    port = _free_port()
    env = _env(root, port)
    t0 = time.monotonic()
    build_log = ARTIFACTS / "build-state.log"
    with open(build_log, "w") as out:
        build = subprocess.Popen([sys.executable, __file__, "build-state", str(root)], env=env,
                                 cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        try:
            code = build.wait(timeout=600)
        finally:
            _stop(build.pid)  # whatever it started too, even on a timeout or an interrupt
    assert code == 0, f"state build failed ({code}), see {build_log}:\n" \
                      f"{build_log.read_text()[-3000:]}"
    print(f"state built in {time.monotonic() - t0:.0f}s")
    runs = json.loads((root / "runs.json").read_text())
    log = open(ARTIFACTS / "standalone.log", "w")  # noqa: SIM115 - closed in the finally below
    proc = None
    try:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "airflow"), "standalone"],
                                env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, f"airflow standalone exited, see {ARTIFACTS / 'standalone.log'}"
            try:
                with urllib.request.urlopen(f"{base}/api/v2/monitor/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            assert time.monotonic() < deadline, "the API server did not answer within 180 s"
            time.sleep(2)
        pw_file = root / "airflow" / "simple_auth_manager_passwords.json.generated"
        while not pw_file.exists():
            assert time.monotonic() < deadline, f"no {pw_file}"
            time.sleep(1)
        password = json.loads(pw_file.read_text())["admin"]
        print(f"airflow up after {time.monotonic() - t0:.0f}s")
        yield base, password, runs
    finally:
        _stop(proc.pid if proc else None)
        log.close()


@pytest.fixture(scope="module")
def driver(airflow_ui, tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    service = Service(executable_path=CHROMEDRIVER, log_output=str(ARTIFACTS / "chromedriver.log"),
                      popen_kw={"start_new_session": True})
    drv, pid = None, None
    try:
        drv = webdriver.Chrome(service=service, options=options)
        pid = service.process.pid  # chromedriver leads the group Chromium's processes join
        drv.set_page_load_timeout(60)
        yield drv
    finally:
        if service.process is not None:
            pid = service.process.pid
        if drv is not None:
            with contextlib.suppress(Exception):  # the process group is killed below anyway
                drv.quit()
        _stop(pid)


def _wait_text(drv, text: str, timeout: float = 60) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(drv, timeout).until(lambda d: text in d.find_element("tag name", "body").text,
                                      message=f"{text!r} not shown on {drv.current_url}")


def _shot(drv, name: str) -> Path:
    path = ARTIFACTS / f"{name}.png"
    drv.save_screenshot(str(path))
    return path


def _get(url: str, cookie: str | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, headers={"Cookie": f"_token={cookie}"} if cookie else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")


# -- the tests (in file order: they share one browser session) -------------------------------------

def _api(base: str, token: str, method: str, path: str, body: dict | None = None) -> dict:
    req = urllib.request.Request(f"{base}/api/v2{path}", method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Authorization": f"Bearer {token}",
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read() or b"{}")


def _wait(check, what: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what}"
        time.sleep(3)


def _token(base: str, password: str) -> str:
    login = urllib.request.Request(f"{base}/auth/token", method="POST",
                                   data=json.dumps({"username": "admin",
                                                    "password": password}).encode(),
                                   headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(login, timeout=30) as r:
        return json.loads(r.read())["access_token"]


def _answer_approval(base: str, token: str, dag_run_id: str, option: str) -> dict:
    """Wait for the run's `approve` task to ask, answer it as the admin, wait for the run."""
    run_id = urllib.parse.quote(dag_run_id, safe="")
    tis = f"/dags/training/dagRuns/{run_id}/taskInstances"
    state = lambda: _api(base, token, "GET", f"{tis}/approve")["state"]  # noqa: E731
    _wait(lambda: state() in ("awaiting_input", "skipped", "failed", "upstream_failed"),
          f"the approval task of {dag_run_id}", 480)
    if state() != "awaiting_input":  # say why: the verdict and what the decision task logged
        verdict = _api(base, token, "GET", f"{tis}/evaluate_gates/xcomEntries/return_value")
        log = _api(base, token, "GET", f"{tis}/decide_promotion/logs/1?full_content=true")
        pytest.fail(f"approve is {state()}: gates {verdict.get('value')}; "
                    f"decide_promotion log {str(log)[-3000:]}")
    # Answer as a person would, not within a second of the question. Airflow 3.3's scheduler
    # marks a HITL task resumed before the executor has reported its deferring process's exit
    # up_for_retry ("finished with state success, but the task instance's state attribute is
    # queued"; the executor's report can lag seconds on a loaded machine), and the retry asks
    # again: then the admin answers the new question, as they would in the UI.
    run = f"/dags/training/dagRuns/{run_id}"
    ti = lambda: _api(base, token, "GET", f"{tis}/approve")  # noqa: E731
    for _ask in range(3):
        time.sleep(5)
        asked = ti()
        assert asked["state"] == "awaiting_input", asked["state"]
        answer = _api(base, token, "PATCH", f"{tis}/approve/-1/hitlDetails",
                      {"chosen_options": [option], "params_input": {}})
        assert answer["chosen_options"] == [option] and answer["responded_by"]["name"] == "admin"

        def settled():
            r = _api(base, token, "GET", run)
            if r["state"] in ("success", "failed"):
                return r
            now = ti()
            if now["try_number"] > asked["try_number"] and now["state"] == "awaiting_input":
                return {"asked_again": now["try_number"]}
            return None

        done = _wait(settled, f"{dag_run_id} to finish", 240)
        if "asked_again" not in done:
            break
        print(f"{dag_run_id}: Airflow asked again (try {done['asked_again']}); answering again")
    assert done.get("state") == "success", done
    window = _api(base, token, "GET", f"{tis}/resolve_window/xcomEntries/return_value")["value"]
    return json.loads(window) if isinstance(window, str) else window


def test_a_drift_event_starts_the_retraining_and_a_person_answers_each_promotion(airflow_ui):
    """The scheduler starts `training` from the retraining request drift_monitor queued; the
    run waits in its `approve` task (Required actions) until the admin approves it through the
    REST API. A second training, triggered by hand, is rejected by the admin. The history says
    who decided."""
    base, password, _ = airflow_ui
    token = _token(base, password)
    _api(base, token, "PATCH", "/dags/training", {"is_paused": False})

    def asset_run() -> dict | None:
        runs = _api(base, token, "GET", "/dags/training/dagRuns")["dag_runs"]
        return next((r for r in runs if r["run_type"] == "asset_triggered"), None)

    run = _wait(asset_run, "the asset-triggered training run", 120)
    window = _answer_approval(base, token, run["dag_run_id"], "Approve")
    assert window["trigger"] == "drift on 2013-06-02", window  # the queued event's day
    assert (window["start"], window["end"]) == ("2013-05-27", "2013-06-03")

    again = _api(base, token, "POST", "/dags/training/dagRuns", {
        "logical_date": None, "conf": {"train_start": TRAIN_WINDOW["start"],
                                       "train_end": TRAIN_WINDOW["end"],
                                       "reason": "same window again"}})
    _answer_approval(base, token, again["dag_run_id"], "Reject")
    _api(base, token, "PATCH", "/dags/training", {"is_paused": True})

    summary = json.loads(_get(f"{base}/mlops/api/summary", token)[1])
    assert summary["models"]["champion"]["version"] == "2"
    assert summary["models"]["challenger"]["version"] == "3"
    events = [(e["action"], e["to_version"], e["user"]) for e in summary["history"]]
    assert events[:6] == [("approval_rejected", "3", "admin"), ("awaiting_approval", "3", "admin"),
                          ("register", "3", None), ("promote", "2", "admin"),
                          ("awaiting_approval", "2", None), ("register", "2", None)], events
    promoted = summary["history"][3]
    assert promoted["reason"] == "retraining: drift on 2013-06-02"




def test_login_and_dag_list(airflow_ui, driver):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    base, password, _ = airflow_ui
    driver.get(f"{base}/")
    WebDriverWait(driver, 60).until(ec.presence_of_element_located((By.CSS_SELECTOR, "input[type=password]")))
    assert "/auth/login" in driver.current_url
    user = driver.find_element(By.CSS_SELECTOR, "input:not([type=password]):not([type=hidden])")
    user.send_keys("admin")
    driver.find_element(By.CSS_SELECTOR, "input[type=password]").send_keys(password)
    _shot(driver, "01-login")
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    WebDriverWait(driver, 60).until(lambda d: "/auth/login" not in d.current_url)
    driver.get(f"{base}/dags")
    for dag_id in ("batch_scoring", "drift_monitor", "training", "rollback", "promote"):
        _wait_text(driver, dag_id)
    _shot(driver, "02-dag-list")


def test_dag_run_grid(airflow_ui, driver):
    base, _, runs = airflow_ui
    driver.get(f"{base}/dags/training/runs/{runs['training']}")
    for task in ("resolve_window", "train", "evaluate_gates", "decide_promotion", "promote"):
        _wait_text(driver, task)
    time.sleep(1.5)  # let the grid finish drawing its bars
    _shot(driver, "03-training-grid")
    driver.get(f"{base}/dags/batch_scoring")
    _wait_text(driver, "score_chunk")
    time.sleep(1.5)
    _shot(driver, "04-batch-scoring-grid")


def _open_extra_link(driver, name: str) -> str:
    """Click the extra link button `name` (same-origin links open in the same tab)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    link = driver.find_element(By.XPATH, f"//a[normalize-space()='{name}']")
    href = link.get_attribute("href")
    tabs = driver.window_handles
    link.click()
    WebDriverWait(driver, 30).until(lambda d: len(d.window_handles) > len(tabs) or d.current_url == href)
    if len(driver.window_handles) > len(tabs):
        driver.switch_to.window(driver.window_handles[-1])
    return href


def test_extra_links_open_the_gate_report_and_the_manifest(airflow_ui, driver):
    from selenium.webdriver.common.by import By

    base, _, runs = airflow_ui
    driver.get(f"{base}/dags/training/runs/{runs['training']}/tasks/evaluate_gates/details")
    for name in ("Extra Links", "Gate report", "MLflow model version", "Model page"):
        _wait_text(driver, name)
    assert "Evidently report" not in driver.find_element(By.TAG_NAME, "body").text  # n/a here
    version = driver.find_element(By.XPATH, "//a[normalize-space()='MLflow model version']")
    assert version.get_attribute("href").endswith("/#/models/delay_model/versions/1")
    _shot(driver, "05-extra-links")
    href = _open_extra_link(driver, "Gate report")
    assert href.endswith("/mlops/files/reports/gates/delay_model-v1.md"), href
    _wait_text(driver, "Gate report for version 1")
    assert "Verdict: PASS" in driver.find_element(By.TAG_NAME, "body").text
    _shot(driver, "06-gate-report")
    driver.switch_to.window(driver.window_handles[0])

    driver.get(f"{base}/dags/batch_scoring/runs/{runs['batch_scoring']}/tasks/score/details")
    for name in ("Partition manifest", "Partition lineage", "MLflow run"):
        _wait_text(driver, name)
    _open_extra_link(driver, "Partition manifest")
    _wait_text(driver, '"model_version"')
    body = driver.find_element(By.TAG_NAME, "body").text
    assert '"onnx_sha256"' in body and '"date": "2013-06-01"' in body
    driver.switch_to.window(driver.window_handles[0])


def test_model_page_in_the_airflow_ui(airflow_ui, driver):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    base, _, _ = airflow_ui
    driver.set_window_size(1440, 1760)  # tall enough for the whole page in the UI's frame
    driver.get(f"{base}/dags")
    menu = WebDriverWait(driver, 60).until(ec.element_to_be_clickable(
        (By.CSS_SELECTOR, "a[href$='/plugin/mlops-model']")))  # the external view's menu entry
    assert menu.text.strip() == "Model"
    menu.click()
    WebDriverWait(driver, 60).until(ec.frame_to_be_available_and_switch_to_it((By.TAG_NAME, "iframe")))
    _wait_text(driver, "Champion and challenger", timeout=120)  # first request imports MLflow
    champion = driver.find_element(By.CSS_SELECTOR, "[data-role=champion]")
    challenger = driver.find_element(By.CSS_SELECTOR, "[data-role=challenger]")
    assert champion.get_attribute("data-version") == "2" and "ROC AUC" in champion.text
    assert challenger.get_attribute("data-version") == "3"
    # v3's deltas are its gate's, against v2 on v3's evaluation rows; v1 was never gated
    # against v2 (their own metrics are on different windows): no delta, said so
    assert "Deltas: against champion v2 on the same rows" in challenger.text
    previous = driver.find_element(By.CSS_SELECTOR, "[data-role=previous_champion]")
    assert "Not compared with champion v2 on the same rows" in previous.text
    actions = [e.get_attribute("data-action") for e in driver.find_elements(By.CSS_SELECTOR, "tr.event")]
    assert actions == ["approval_rejected", "awaiting_approval", "register", "promote",
                       "awaiting_approval", "register", "promote", "register"], actions
    assert "admin" in driver.find_element(By.CSS_SELECTOR, "tr.event[data-action=promote]").text
    assert len(driver.find_elements(By.CSS_SELECTOR, "#trends svg.chart")) == 3
    drift_points = driver.find_elements(By.CSS_SELECTOR, "#chart-drift circle")
    assert len(drift_points) == 2  # the drift checks of June 2 and 3
    steps = [e.get_attribute("data-step") for e in driver.find_elements(By.CSS_SELECTOR, ".chain .step")]
    assert steps == ["data version", "feature service", "training run", "model version",
                     "ONNX sha256", "partition"]
    assert "manifest and registry agree" in driver.find_element(By.ID, "lineage").text
    time.sleep(1)
    driver.switch_to.default_content()
    _shot(driver, "07-model-page")
    driver.set_window_size(1440, 1000)


def test_model_page_and_reports_need_an_airflow_login(airflow_ui, driver):
    base, _, _ = airflow_ui
    token = driver.get_cookie("_token")["value"]
    for path in ("/mlops/", "/mlops/api/summary", "/mlops/files/reports/gates/delay_model-v1.md"):
        assert _get(base + path)[0] == 401, path
        assert _get(base + path, "not-a-token")[0] in (401, 403), path
        assert _get(base + path, token)[0] == 200, path
    summary = json.loads(_get(f"{base}/mlops/api/summary", token)[1])
    assert summary["models"]["champion"]["version"] == "2"
    for bad in ("/mlops/files/reports/%2e%2e/airflow/airflow.cfg",
                "/mlops/files/reports/..%2F..%2Fairflow%2Fairflow.cfg",
                "/mlops/files/data/landing/flights/date=2013-06-01/flights.csv"):
        status, body = _get(base + bad, token)
        assert status in (403, 404), (bad, status)
        assert "[core]" not in body and "dep_time" not in body


if __name__ == "__main__" and sys.argv[1:2] == ["build-state"]:
    build_state(Path(sys.argv[2]))
