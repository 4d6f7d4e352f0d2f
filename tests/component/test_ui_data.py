"""The model page's data functions, extra links and report server on a small real state.

MLflow runs on SQLite in a tmp folder; versions are registered with MlflowClient and moved with
the project's own registry functions, so aliases and the promotion history are the real thing.
Drift verdicts, quality checks, manifests and reports are written with `pipelines.core.storage` in
the shapes the pipeline writes them.
"""

from __future__ import annotations

import os
import sys
import xml.etree.ElementTree as ET
from datetime import date, timedelta
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "plugins"))  # Airflow puts the plugins folder on sys.path

from mlops_ui import charts, data, files, links, page, trends, urls

from pipelines.core import locations

NAME = "delay_model"
EVIL_SVG = (b'<svg xmlns="http://www.w3.org/2000/svg"><script>fetch("/api/v2/variables")</script>'
            b'<circle r="4"/></svg>')
SHA = {"1": "a" * 64, "2": "b" * 64, "3": "c" * 64}
METRICS = {"1": 0.70, "2": 0.72, "3": 0.69}
CARD_V2 = ("---\nmodel-index:\n- name: delay_model-v2\n---\n\n# Model card: delay_model v2\n\n"
           "## Intended use\n\nRanks <things> & more\n")


def _gate_report(settings, version: str, passed: bool, champion: str | None) -> str:
    from pipelines.core import storage

    uri = storage.join(settings.reports_uri, "gates", f"{NAME}-v{version}.json")
    report = {"passed": passed, "failed": [] if passed else ["beats_champion:roc_auc"],
              "checks": [], "metrics": {"roc_auc": METRICS[version]}, "version": version,
              # the champion on the same rows: 0.05 better than this version (whatever the
              # two versions' own run metrics say)
              "comparison": {"ci_low": 0.01, "ci_high": 0.03, "champion_metrics": {
                  "roc_auc": METRICS[version] + 0.05, "brier": None}} if champion else None,
              "champion_version": champion, "has_champion": champion is not None}
    storage.write_json(uri, report)
    storage.write_bytes(uri[:-5] + ".md", f"# Gate report for version {version}\n".encode())
    return uri


def _register(c, settings, exp_id: str, version: str) -> str:
    from pipelines.model import registry

    run = c.create_run(exp_id, tags={"dvc_data_version": "d" * 32,
                                     "training_data_sha256": "e" * 64,
                                     "feature_service": "flight_delay_service_v1"})
    rid = run.info.run_id
    for k, v in {"roc_auc": METRICS[version], "pr_auc": 0.4, "calibration_error": 0.02,
                 "brier": 0.2, "onnx_max_abs_diff": 1e-7}.items():
        c.log_metric(rid, k, v)
    c.log_param(rid, "train_rows", 1000)
    c.log_param(rid, "eval_rows", 250)
    c.set_terminated(rid)
    src = os.path.join(settings.state_uri, f"model-{version}")
    os.makedirs(src, exist_ok=True)
    c.create_model_version(NAME, src, run_id=rid, tags={
        "onnx_sha256": SHA[version], "feature_service": "flight_delay_service_v1",
        "feature_service_hash": "f" * 16, "training_window": "2013-01-01..2013-01-15",
        "dvc_data_version": "d" * 32, "training_data_sha256": "e" * 64, "trigger": "manual",
        "gate_verdict": "fail" if version == "3" else "pass"})
    c.set_registered_model_alias(NAME, "challenger", version)
    registry.record(settings, {"action": "register", "model": NAME, "to_version": version,
                               "actor": "manual__test", "reason": "new challenger", "run_id": rid})
    return rid


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    """Champion v2 (re-promoted after a rollback), previous v1, challenger v3 rejected;
    ten monitored days with drift from 06-06 and a retraining request on 06-08; two partitions,
    one of them inconsistent with the registry; a validation report with Data Docs."""
    root = tmp_path_factory.mktemp("ui-state")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLOPS_STATE_URI", str(root))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        from pipelines.core import storage
        from pipelines.core.settings import get_settings
        from pipelines.model import promotion, registry

        settings = get_settings()
        c = registry.client(settings)
        exp = registry.ensure_experiment(settings, NAME)
        registry.ensure_registered_model(c, NAME)
        runs = {"1": _register(c, settings, exp, "1")}
        registry.promote(settings, NAME, "1", "manual__t1", "first model",
                         _gate_report(settings, "1", True, None))
        runs["2"] = _register(c, settings, exp, "2")
        registry.promote(settings, NAME, "2", "manual__t2", "retraining: drift on 2013-06-03",
                         _gate_report(settings, "2", True, "1"))
        registry.rollback(settings, NAME, "previous", "manual__rb", "bad <b>night</b>",
                          user="ops-oncall")
        registry.promote(settings, NAME, "2", "manual__t3", "re-promoted after the fix",
                         _gate_report(settings, "2", True, "1"))
        runs["3"] = _register(c, settings, exp, "3")
        report3 = _gate_report(settings, "3", False, "2")
        promotion.record_decision(settings, NAME, {"version": "3", "champion_version": "2",
                                                   "failed": ["beats_champion:roc_auc"],
                                                   "report_uri": report3},
                                  promotion.REJECT, "manual__t4", "manual training")

        # the champion's model card folder as pipelines.model.card writes it; v3 has none
        cards = locations.card_folder(settings, NAME, "2")
        storage.write_bytes(locations.model_card(settings, NAME, "2"), CARD_V2.encode())
        storage.write_bytes(storage.join(cards, "datasheet.md"), b"# Datasheet\n")
        storage.write_bytes(storage.join(cards, "shap_importance.png"), b"\x89PNG\r\n\x1a\n")

        drift = storage.join(settings.registry_uri, "drift")
        for k in range(10):
            day = date(2013, 6, 1) + timedelta(days=k)
            html = storage.join(settings.reports_uri, "drift", f"date={day}", "evidently.html")
            storage.write_bytes(html, b"<html><body>evidently</body></html>")
            storage.write_json(storage.join(drift, "verdicts", f"{day}.json"), {
                "date": day.isoformat(), "drift": k >= 5, "drift_share": 0.1 + 0.1 * k,
                "prediction_psi": 0.05 * k, "drifted": ["weather_fv__temp"] if k >= 5 else [],
                "thresholds": {"drift_share": 0.5, "prediction_psi": 0.25, "psi_default": 0.2},
                "model_version": "2", "reason": "r", "status": "ok", "report_uri": html})
            if k >= 2:
                labelled = day - timedelta(days=2)
                metrics = {"roc_auc": 0.72 - 0.01 * k, "pr_auc": 0.4, "calibration_error": 0.03, "n": 800}
                storage.write_json(storage.join(drift, "quality", f"{day}.json"), {
                    "date": day.isoformat(), "labelled_day": labelled.isoformat(),
                    "decay": k == 9, "status": "ok", "reason": "", "model_version": "2",
                    "daily": metrics, "window": metrics, "baseline": {"roc_auc": 0.72}})
            storage.write_json(storage.join(drift, "decisions", f"{day}.json"), {
                "date": day.isoformat(), "retrain": day == date(2013, 6, 8), "signal": k >= 5,
                "streak": max(0, k - 4), "reason": "test"})

        v2 = c.get_model_version(NAME, "2")
        for day, sha in (("2013-06-05", SHA["2"]), ("2013-06-06", "0" * 64)):
            storage.write_json(storage.join(settings.predictions_uri, f"date={day}", "_manifest.json"), {
                "date": day, "files": ["part-00000-x.parquet"], "input_rows": 900,
                "output_rows": 900, "model": NAME, "model_version": "2", "onnx_sha256": sha,
                "feature_service": "flight_delay_service_v1", "model_run_id": v2.run_id,
                "airflow_run_id": f"scheduled__{day}", "data_version": {"dvc": "d" * 32,
                                                                        "input_sha256": "9" * 64}})
        storage.write_bytes(storage.join(settings.predictions_uri, "date=2013-06-07", "part-0.parquet"), b"x")

        docs = storage.join(settings.reports_uri, "data_docs", "flights", "date=2013-06-05",
                            "validations", "flights", "run", "validation-flights.html")
        storage.write_bytes(docs, b"<html>docs</html>")
        vuri = storage.join(settings.reports_uri, "validation", "flights", "date=2013-06-05.json")
        storage.write_json(vuri, {"table": "flights", "success": True, "rows": 700, "n_checks": 56,
                                  "failures": [], "warnings": [], "data_docs_uri": docs,
                                  "expectations_report_uri": vuri[:-5] + ".md"})
        storage.write_bytes(vuri[:-5] + ".md", b"# flights 2013-06-05\n")
        storage.write_bytes(storage.join(settings.data_uri, "landing", "flights.csv"), b"a,b\n")
        # what suppliers put in the landing zone and what the quarantine keeps of it: report-like
        # suffixes, never served
        landed = locations.batch(settings.landing_uri, "flights", date(2013, 6, 5)).rsplit("/", 1)[0]
        quarantined = locations.quarantine(settings, "flights", "date=2013-06-05", "20130605T010000Z")
        for folder in (landed, quarantined):
            storage.write_bytes(storage.join(folder, "logo.svg"), EVIL_SVG)
            storage.write_bytes(storage.join(folder, "report.html"), b"<script>steal()</script>")
            storage.write_json(storage.join(folder, "report.json"), {"supplier": "secret"})
        # a report tree file with a script, and one of a type the browser should not show
        storage.write_bytes(storage.join(settings.reports_uri, "drift", "date=2013-06-01", "plot.svg"),
                            EVIL_SVG)
        storage.write_bytes(storage.join(settings.reports_uri, "drift", "date=2013-06-01", "raw.bin"),
                            b"\x00\x01binary")
        yield settings, runs


# -- models, history, lineage ------------------------------------------------------------------

def test_models_by_alias_with_metrics_and_lineage_tags(state):
    settings, runs = state
    m = data.models(settings, NAME)
    assert (m["champion"]["version"], m["challenger"]["version"], m["previous_champion"]["version"]) \
        == ("2", "3", "1")
    champ = m["champion"]
    assert champ["run_id"] == runs["2"] and champ["metrics"]["roc_auc"] == pytest.approx(0.72)
    assert set(champ["metrics"]) == set(data.HEADLINE)
    assert champ["other_metrics"] == {"onnx_max_abs_diff": pytest.approx(1e-7)}
    assert champ["params"] == {"train_rows": "1000", "eval_rows": "250"}
    assert champ["tags"]["onnx_sha256"] == SHA["2"] and champ["tags"]["gate_verdict"] == "pass"
    assert champ["gate_report_uri"].endswith(f"gates/{NAME}-v2.json")
    assert m["challenger"]["tags"]["gate_verdict"] == "fail"


def test_models_of_an_unknown_model_are_all_none(state, tmp_path):
    settings, _ = state
    assert data.models(settings, "no_such_model") == dict.fromkeys(data.ROLES)
    fresh = dataclass_replace(settings, mlflow_tracking_uri=f"sqlite:///{tmp_path}/mlflow/mlflow.db")
    assert data.models(fresh, NAME) == dict.fromkeys(data.ROLES)
    assert not (tmp_path / "mlflow").exists()  # looking did not create a store


def test_promotion_history_newest_first_with_gate_reports_and_reasons(state):
    settings, _ = state
    h = data.promotion_history(settings, NAME)
    assert [(e["action"], e["to_version"]) for e in h] == [
        ("rejected", "3"), ("register", "3"), ("promote", "2"), ("rollback", "1"),
        ("promote", "2"), ("register", "2"), ("promote", "1"), ("register", "1")]
    rejected, _, repromote, rollback = h[:4]
    assert rejected["failed_gates"] == ["beats_champion:roc_auc"] and not rejected["moves_champion"]
    assert rejected["gate_report"].endswith("-v3.json") and not rejected["gate_report_of_version"]
    assert repromote["reason"] == "re-promoted after the fix" and repromote["moves_champion"]
    assert (repromote["from_version"], repromote["to_version"]) == ("1", "2")
    # a rollback has no gate report of its own: the page shows the version's
    assert rollback["gate_report"].endswith("-v1.json") and rollback["gate_report_of_version"]
    assert (rollback["user"], rollback["actor"]) == ("ops-oncall", "manual__rb")  # who, and which run
    assert repromote["user"] is None
    assert len(data.promotion_history(settings, NAME, limit=3)) == 3
    assert data.promotion_history(settings, "other_model") == []


def test_partitions_are_days_with_a_manifest(state):
    settings, _ = state
    assert data.partitions(settings) == ["2013-06-06", "2013-06-05"]  # 06-07 has no manifest


def test_lineage_chain_of_a_consistent_partition(state):
    settings, runs = state
    lin = data.lineage(settings, date(2013, 6, 5))
    assert [s["step"] for s in lin["steps"]] == ["data version", "feature service", "training run",
                                                 "model version", "ONNX sha256", "partition"]
    steps = {s["step"]: s for s in lin["steps"]}
    assert steps["data version"]["value"] == "d" * 32
    assert steps["feature service"]["value"] == "flight_delay_service_v1"
    assert steps["feature service"]["detail"]["hash at training"] == "f" * 16
    assert steps["training run"]["run_id"] == runs["2"] and steps["training run"]["ok"] is True
    assert steps["model version"]["value"] == f"{NAME} v2"
    assert steps["ONNX sha256"]["value"] == SHA["2"] and steps["ONNX sha256"]["ok"] is True
    assert steps["partition"]["detail"]["rows"] == 900
    assert steps["partition"]["uri"].endswith("predictions/date=2013-06-05/_manifest.json")
    assert lin["consistent"] is True


def test_lineage_flags_a_partition_scored_by_other_bytes(state):
    settings, _ = state
    lin = data.lineage(settings, date(2013, 6, 6))
    onnx = next(s for s in lin["steps"] if s["step"] == "ONNX sha256")
    assert onnx["ok"] is False and lin["consistent"] is False


def test_lineage_of_a_day_without_partition_is_none(state):
    settings, _ = state
    assert data.lineage(settings, date(2013, 6, 7)) is None
    assert data.lineage(settings, date(2012, 1, 1)) is None


def test_validation_reports_of_a_day(state):
    settings, _ = state
    rows = data.validation_reports(settings, [date(2013, 6, 5)])
    assert [(r["table"], r["partition"], r["success"], r["rows"]) for r in rows] == \
        [("flights", "date=2013-06-05", True, 700)]
    assert rows[0]["data_docs_uri"].endswith("validation-flights.html")
    assert data.validation_reports(settings, [date(2013, 6, 4)]) == []


@pytest.fixture
def unreachable(state, monkeypatch):
    """The state's settings with a registry that refuses connections (a closed loopback port),
    MLflow's HTTP retries off so the refusal is answered at once."""
    import socket

    settings, _ = state
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # for the app, which reads the environment
    return dataclass_replace(settings, mlflow_tracking_uri=uri, mlflow_max_retries=0), uri


def test_models_say_when_the_registry_cannot_be_asked(unreachable):
    from pipelines.model import registry

    settings, uri = unreachable
    with pytest.raises(registry.RegistryUnavailable):
        data.models(settings, NAME)  # never "no champion"
    models, error = data.models_or_error(settings, NAME)
    assert models is None
    assert error.startswith("could not ask the registry: ") and uri in error, error


def test_lineage_says_when_the_registry_cannot_be_asked(unreachable):
    settings, _ = unreachable
    lin = data.lineage(settings, date(2013, 6, 5))
    assert lin["registry_error"].startswith("could not ask the registry: ")
    assert lin["consistent"] is None  # unknown, not "manifest and registry disagree"
    assert [s["ok"] for s in lin["steps"]] == [None] * 6
    assert {s["step"]: s["value"] for s in lin["steps"]}["ONNX sha256"] == SHA["2"]  # the manifest's


# -- trends ----------------------------------------------------------------------------------------

def test_trend_covers_the_last_n_days_ending_at_the_latest_check(state):
    settings, _ = state
    t = trends.trend(trends.source_for(settings), days=5)
    assert (t["start"], t["end"]) == ("2013-06-06", "2013-06-10")
    assert t["days"] == [f"2013-06-{d:02d}" for d in range(6, 11)]
    assert [p["date"] for p in t["drift"]] == t["days"] and all(p["drift"] for p in t["drift"])
    assert t["drift"][0]["drift_share_threshold"] == 0.5
    assert t["drift"][0]["report_uri"].endswith("date=2013-06-06/evidently.html")
    # quality points sit on the day whose outcomes they scored (checked two days later)
    assert [p["date"] for p in t["quality"]] == ["2013-06-06", "2013-06-07", "2013-06-08"]
    assert t["quality"][-1]["checked_on"] == "2013-06-10" and t["quality"][-1]["decay"] is True
    assert t["quality"][0]["baseline_roc_auc"] == 0.72
    assert t["retrain"] == ["2013-06-08"]


def test_trend_with_an_explicit_end_and_no_data(state, tmp_path):
    settings, _ = state
    source = trends.source_for(settings)
    t = trends.trend(source, days=3, end=date(2013, 6, 2))
    assert t["days"] == ["2013-06-01", "2013-06-02"]  # not before the first check
    assert trends.trend(source, days=30)["start"] == "2013-06-01"
    assert [p["drift"] for p in t["drift"]] == [False, False]
    assert [p["date"] for p in t["quality"]] == ["2013-06-01", "2013-06-02"]  # scored later
    empty = trends.VerdictFiles(dataclass_replace(settings, data_uri=str(tmp_path)))
    assert trends.trend(empty, days=30)["days"] == []


def dataclass_replace(settings, **changes):
    import dataclasses

    return dataclasses.replace(settings, **changes)


# -- files -------------------------------------------------------------------------------------

def test_files_resolve_serves_reports_and_manifests(state):
    settings, _ = state
    served = files.resolve(settings, "reports", f"gates/{NAME}-v2.md")
    assert served.path.read_text().startswith("# Gate report")
    assert served.content_type.startswith("text/plain") and not served.attachment
    served = files.resolve(settings, "manifests", "2013-06-05.json")
    assert served.content_type == "application/json"
    assert str(served.path) == locations.manifest(settings, date(2013, 6, 5))
    served = files.resolve(settings, "reports", "drift/date=2013-06-01/evidently.html")
    assert served.content_type.startswith("text/html")


@pytest.mark.parametrize("rel", ["report.json", "logo.svg", "report.html"])
@pytest.mark.parametrize("zone", ["landing", "quarantine"])
def test_files_of_the_landing_zone_and_quarantine_are_never_served(state, zone, rel):
    """Not through any root or spelling, not even when the reports tree is configured to
    contain the data root; and no link is made to them."""
    settings, _ = state
    folder = (locations.batch(settings.landing_uri, "flights", date(2013, 6, 5)).rsplit("/", 1)[0]
              if zone == "landing" else
              locations.quarantine(settings, "flights", "date=2013-06-05", "20130605T010000Z"))
    uri = f"{folder}/{rel}"
    assert Path(uri).is_file()
    from_data = os.path.relpath(uri, settings.data_uri)
    for root, path in (("data", from_data), ("reports", f"../data/{from_data}"),
                       ("manifests", from_data)):
        with pytest.raises(files.FileDenied):
            files.resolve(settings, root, path)
    assert files.href(settings, uri) is None and files.href(settings, "file://" + uri) is None
    wide = dataclass_replace(settings, reports_uri=settings.state_uri)  # reports contain data/
    with pytest.raises(files.FileDenied):
        files.resolve(wide, "reports", os.path.relpath(uri, settings.state_uri))
    assert files.href(wide, uri) is None


@pytest.mark.parametrize("root, rel", [
    ("reports", "../data/predictions/date=2013-06-05/_manifest.json"),  # traversal
    ("reports", "gates/../../../../etc/passwd"),
    ("reports", "/etc/passwd"),                       # absolute
    ("reports", "..\\..\\etc\\passwd"),               # backslashes
    ("reports", "gates/%00.md\x00"),                  # NUL
    ("reports", "%2e%2e/data/landing/flights.csv"),   # still encoded: refused, never decoded
    ("reports", f"gates//{NAME}-v2.md"),              # not in normal form: refused, not repaired
    ("reports", f"gates/./{NAME}-v2.md"),
    ("reports", f"./gates/{NAME}-v2.md"),
    ("reports", f"gates/{NAME}-v2.md/"),
    ("reports", ".hidden/x.json"),                    # hidden / in-progress writes
    ("data", "landing/flights.csv"),                  # the data root is not served
    ("data", "predictions/date=2013-06-05/_manifest.json"),
    ("manifests", "date=2013-06-05/_manifest.json"),  # a manifest is named by its day only
    ("manifests", "../2013-06-05.json"),
    ("manifests", "2013-13-45.json"),
    ("airflow", "airflow.cfg"),                       # not a served root
    ("reports", ""),
])
def test_files_resolve_refuses(state, root, rel):
    settings, _ = state
    with pytest.raises(files.FileDenied):
        files.resolve(settings, root, rel)


@pytest.mark.parametrize("outside", ["tmp", "landing"])
def test_files_resolve_refuses_a_symlink_out_of_the_root(state, tmp_path, outside):
    settings, _ = state
    secret = tmp_path / "secret.json"
    secret.write_text("{}")
    if outside == "landing":
        secret = Path(locations.batch(settings.landing_uri, "flights", date(2013, 6, 5))
                      ).parent / "report.json"
    link = Path(settings.reports_uri) / "gates" / "escape.json"
    link.symlink_to(secret)
    try:
        with pytest.raises(files.FileDenied):
            files.resolve(settings, "reports", "gates/escape.json")
        assert files.href(settings, str(link)) is None
    finally:
        link.unlink()


def test_files_resolve_missing_file(state):
    settings, _ = state
    with pytest.raises(FileNotFoundError):
        files.resolve(settings, "reports", "gates/nothing.md")
    with pytest.raises(FileNotFoundError):
        files.resolve(settings, "manifests", "2013-06-07.json")  # parts, but no manifest


def test_files_href(state):
    settings, _ = state
    uri = f"{settings.reports_uri}/drift/date=2013-06-01/evidently.html"
    assert files.href(settings, uri) == "/mlops/files/reports/drift/date=2013-06-01/evidently.html"
    assert files.href(settings, "file://" + uri) == files.href(settings, uri)
    assert files.href(settings, locations.manifest(settings, date(2013, 6, 5))) == \
        "/mlops/files/manifests/2013-06-05.json"
    assert files.href(settings, f"{settings.registry_uri}/history/x.json") is None  # data root
    assert files.href(settings, "/etc/passwd") is None
    assert files.href(settings, None) is None


@pytest.mark.parametrize("uri", [
    "{reports}/gates/../../data/landing/flights/date=2013-06-05/report.json",  # traversal
    "{reports}/gates/../gates/" + NAME + "-v2.md",                      # inside, not normalised
    "{reports}/./gates/" + NAME + "-v2.md",
    "{reports}//gates/" + NAME + "-v2.md",
    "{reports}/%2e%2e/data/landing/flights/date=2013-06-05/report.json",  # encoded
    "{reports}/gates/%2E%2E/%2E%2E/data/landing/flights.csv",
    "{reports}/gates/" + NAME + "-v2.md\x00.png",
    "file://localhost{reports}/gates/" + NAME + "-v2.md",               # a host
    "file:{reports}/gates/" + NAME + "-v2.md",
    "s3://bucket{reports}/gates/" + NAME + "-v2.md",                   # other schemes
    "http://127.0.0.1:8080{reports}/gates/" + NAME + "-v2.md",
    "gates/" + NAME + "-v2.md",                                         # relative
    "{predictions}/date=2013-06-05/../date=2013-06-05/_manifest.json",
    "{predictions}/date=2013-06-07/part-0.parquet",                     # data, not a manifest
])
def test_files_href_refuses_uris_not_normalised_or_outside_the_served_trees(state, uri):
    settings, _ = state
    assert files.href(settings, uri.format(reports=settings.reports_uri,
                                           predictions=settings.predictions_uri)) is None


# -- extra links ---------------------------------------------------------------------------------

def _links(settings, task_id, value, upstream=(), day=None, dag_id="training", monitoring=False):
    return links.links_for(settings, links.TaskOutput(dag_id, task_id, value, tuple(upstream), day,
                                                      monitoring), NAME)


def test_links_of_train_point_at_mlflow(state, monkeypatch):
    settings, runs = state
    monkeypatch.setenv("MLFLOW_UI_URL", "http://mlflow.example:5000/")
    got = _links(settings, "train", {"run_id": runs["2"], "version": "2", "metrics": {}})
    assert got == {links.MLFLOW_RUN: f"http://mlflow.example:5000/#/runs/{runs['2']}",
                   links.MLFLOW_VERSION: f"http://mlflow.example:5000/#/models/{NAME}/versions/2",
                   links.MODEL_PAGE: "/mlops/#models",
                   links.MODEL_CARD: f"/mlops/files/reports/cards/{NAME}-v2/model_card.md",
                   links.DATASHEET: f"/mlops/files/reports/cards/{NAME}-v2/datasheet.md"}
    # a version without a card (v3: registered before cards) gets no card links, not dead ones
    got = _links(settings, "train", {"run_id": runs["3"], "version": "3", "metrics": {}})
    assert links.MODEL_CARD not in got and links.DATASHEET not in got and links.MLFLOW_VERSION in got


def _gates(settings):
    return {"passed": True, "failed": [], "version": "2", "champion_version": "1",
            "report_uri": locations.gate_report(settings, NAME, "2")}


def test_links_of_gates_and_decision_point_at_the_gate_report(state):
    settings, _ = state
    got = _links(settings, "evaluate_gates", _gates(settings))
    assert got[links.GATE_REPORT] == f"/mlops/files/reports/gates/{NAME}-v2.md"
    assert links.MLFLOW_VERSION in got and links.MLFLOW_RUN not in got
    # a task that returns a bool links to what its upstream tasks produced
    window = {"start": "2013-01-01", "end": "2013-01-15", "trigger": "manual"}
    assert _links(settings, "decide_promotion", True,
                  [{"evaluate_gates": _gates(settings), "resolve_window": window}]) == got


def test_links_of_a_promotion_event(state):
    settings, _ = state
    event = {"action": "promote", "model": NAME, "from_version": "1", "to_version": "2",
             "actor": "manual__2013-01-15T00:00:00+00:00", "reason": "r",
             "gate_report": locations.gate_report(settings, NAME, "2")}
    got = _links(settings, "promote", event)
    assert got[links.GATE_REPORT].endswith("-v2.md") and got[links.MLFLOW_VERSION].endswith("/versions/2")
    assert links.MLFLOW_RUN not in got  # an Airflow run id is not an MLflow run


def _verdict(settings):
    return {"date": "2013-06-03", "drift": True, "model_version": "1",
            "report_uri": locations.drift_report(settings, date(2013, 6, 3), "evidently.html")}


def test_links_of_drift_tasks(state):
    settings, _ = state
    got = _links(settings, "check_drift", _verdict(settings), monitoring=True)
    assert got[links.EVIDENTLY] == "/mlops/files/reports/drift/date=2013-06-03/evidently.html"
    assert got[links.MODEL_PAGE] == "/mlops/#trends"
    decision = {"date": "2013-06-03", "retrain": True, "signal": True, "streak": 2, "reason": "r"}
    assert _links(settings, "decide", decision, [{"check_drift": _verdict(settings),
                                                   "check_quality": {"decay": False}}],
                  monitoring=True) == got
    # two levels up: the short circuit after `decide` links to the check it decided on
    assert _links(settings, "retrain_requested", True,
                  [{"decide": decision}, {"check_drift": _verdict(settings)}], monitoring=True) == got
    plot = _links(settings, "plot_history", locations.drift_report(settings, date(2013, 6, 3), "history.png"))
    assert plot[links.DRIFT_PLOT].endswith("/history.png")


def test_links_of_score_point_at_manifest_lineage_and_the_scoring_run(state):
    settings, runs = state
    out = {"partition_uri": locations.predictions(settings, date(2013, 6, 5)), "rows": 900,
           "model_version": "2", "files": 1}
    got = _links(settings, "score", out, dag_id="batch_scoring")
    assert got[links.MANIFEST] == "/mlops/files/manifests/2013-06-05.json"
    assert got[links.LINEAGE] == "/mlops/?partition=2013-06-05#lineage"
    assert got[links.MLFLOW_RUN].endswith(f"/#/runs/{runs['2']}")  # from the manifest
    assert got[links.MLFLOW_VERSION].endswith(f"/models/{NAME}/versions/2")


def test_links_of_validation_tasks(state):
    settings, _ = state
    day = _links(settings, "validate_batch", {"rows": 900}, day=date(2013, 6, 5), dag_id="batch_scoring")
    assert day == {links.DATA_DOCS: "/mlops/validation?day=2013-06-05"}
    window = _links(settings, "validate_raw", {"batches": 3}, [{"resolve_window": {
        "start": "2013-01-01", "end": "2013-01-15", "trigger": "manual"}}])
    assert window == {links.DATA_DOCS: "/mlops/validation?start=2013-01-01&end=2013-01-15"}
    vuri = locations.validation_report(settings, "flights", "date=2013-06-05")
    direct = _links(settings, "validate_batch", {"rows": 1, "report_uri": vuri}, day=date(2013, 6, 5))
    assert direct[links.DATA_DOCS].endswith("/validations/flights/run/validation-flights.html")


@pytest.mark.parametrize("task_id", ["build_training_set", "assemble_rows"])  # by contract, not id
def test_links_of_the_training_set_and_other_reports(state, task_id):
    from pipelines.core import storage

    settings, _ = state
    ts = {"uri": locations.training_set(settings, "2013-06-05", "2013-06-06"),
          "start": "2013-06-05", "end": "2013-06-06", "rows": 10}
    assert _links(settings, task_id, ts) == {}  # not validated: no link
    vuri = locations.validation_report(settings, "training_set", "2013-06-05_2013-06-06")
    storage.write_json(vuri, {"data_docs_uri": None})
    try:
        assert _links(settings, task_id, ts) == {
            links.DATA_DOCS: "/mlops/files/reports/validation/training_set/2013-06-05_2013-06-06.md"}
        # a window whose set is not where locations puts it is not a training set
        assert _links(settings, task_id, {**ts, "uri": f"{settings.landing_uri}/x.parquet"}) == {}
    finally:
        storage.remove(vuri)
    skew = storage.join(settings.reports_uri, "skew", "date=2013-06-05.json")
    storage.write_json(skew, {"passed": True})
    assert _links(settings, "check_skew", {"report_uri": skew, "passed": True}) == {
        links.REPORT: "/mlops/files/reports/skew/date=2013-06-05.json"}
    assert _links(settings, "check_skew", {"report_uri": skew + ".gone"}) == {}


FILE_LINKS = (links.GATE_REPORT, links.EVIDENTLY, links.DRIFT_PLOT, links.DATA_DOCS, links.MANIFEST,
              links.LINEAGE, links.REPORT)


@pytest.mark.parametrize("value", [
    {"version": "2", "report_uri": "{reports}/gates/../gates/" + NAME + "-v2.json"},
    {"report_uri": "{reports}/../data/landing/flights/date=2013-06-05/report.json"},
    {"report_uri": "{reports}/./drift/date=2013-06-01/evidently.html"},
    {"report_uri": "{reports}//drift/date=2013-06-01/evidently.html"},
    {"report_uri": "{reports}/%2e%2e/data/landing/flights/date=2013-06-05/report.json"},
    {"report_uri": "file://{landing}/flights/date=2013-06-05/report.json"},
    {"report_uri": "file://localhost{reports}/drift/date=2013-06-01/evidently.html"},
    {"report_uri": "s3://bucket{reports}/drift/date=2013-06-01/evidently.html"},
    {"data_docs_uri": "{landing}/flights/date=2013-06-05/report.html"},
    {"partition_uri": "{predictions}/../predictions/date=2013-06-05"},
    {"partition_uri": "{landing}/flights/date=2013-06-05"},
    {"partition_uri": "{predictions}/date=2013-06-05/"},
    "{reports}/drift/date=2013-06-03/../../../data/landing/flights/date=2013-06-05/logo.svg",
    "{reports}/drift/date=2013-06-01/../date=2013-06-01/evidently.html",
])
def test_links_refuse_xcom_uris_outside_the_roots_or_not_normalised(state, value):
    """The files exist, so a link that normalised or followed them would be made."""
    settings, _ = state
    fill = {"reports": settings.reports_uri, "landing": settings.landing_uri,
            "predictions": settings.predictions_uri}
    value = ({k: v.format(**fill) for k, v in value.items()} if isinstance(value, dict)
             else value.format(**fill))
    got = links.links_for(settings, links.TaskOutput("training", "check_skew", value), NAME)
    assert not set(got) & set(FILE_LINKS), got
    # a version's card and datasheet come from where locations puts them, not from a URI
    by_version = {links.MODEL_CARD: f"/mlops/files/reports/cards/{NAME}-v2/model_card.md",
                  links.DATASHEET: f"/mlops/files/reports/cards/{NAME}-v2/datasheet.md"}
    assert all(got[k] == url for k, url in by_version.items() if k in got), got
    assert not any("/files/" in url for k, url in got.items() if k not in by_version), got


def test_links_refuse_a_validation_report_pointing_into_the_landing_zone(state):
    from pipelines.core import storage

    settings, _ = state
    vuri = locations.validation_report(settings, "weather", "date=2013-06-05")
    landed = locations.batch(settings.landing_uri, "flights", date(2013, 6, 5)).rsplit("/", 1)[0]
    storage.write_json(vuri, {"data_docs_uri": f"{landed}/report.html"})
    try:
        got = links.links_for(settings, links.TaskOutput("training", "check", {"report_uri": vuri}), NAME)
        assert not any("landing" in url for url in got.values()), got
    finally:
        storage.remove(vuri)


@pytest.mark.parametrize("task_id, value", [
    ("build_features", 12), ("resolve_window", {"start": "2013-01-01", "end": "2013-01-15"}),
    ("check_quality_x", None), ("train", {"run_id": "manual__2013", "version": "latest"}),
])
def test_links_do_not_apply(state, task_id, value):
    settings, _ = state
    assert _links(settings, task_id, value) == {}


@pytest.fixture(scope="module")
def served_dags():
    """The project's DAGs as the API server holds them: parsed, serialized and read back."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.serialization.serialized_objects import DagSerialization

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    return {i: DagSerialization.from_dict(DagSerialization.to_dict(d)) for i, d in bag.dags.items()}


def test_links_follow_the_edges_of_the_project_dags(state, served_dags):
    """Which upstream values a task links to is read from its DAG, not from a table of ids."""
    from mlops_ui import task_outputs

    settings, runs = state
    window = {"start": "2013-01-01", "end": "2013-01-15", "trigger": "manual"}
    decision = {"date": "2013-06-03", "retrain": True, "signal": True, "streak": 2, "reason": "r"}
    values = {"resolve_window": window, "validate_raw": {"batches": 3, "rows": 9, "absent": []},
              "build_features": 4, "evaluate_gates": _gates(settings), "decide_promotion": True,
              "wait_for_predictions": True, "check_drift": _verdict(settings),
              "check_quality": {"date": "2013-06-03", "decay": False}, "decide": decision,
              "resolve_model": {"model": NAME, "version": "2", "run_id": runs["2"]},
              "plan_chunks": [{"chunk": 0, "rows": 9}]}

    def got(dag_id, task_id, own=None):
        op = served_dags[dag_id].get_task(task_id)
        output = task_outputs.task_output(op, values.get(task_id, own), values, None)
        return links.links_for(settings, output, NAME)

    gate = _links(settings, "evaluate_gates", _gates(settings))
    assert got("training", "decide_promotion") == gate
    evidently = got("drift_monitor", "check_drift")
    assert evidently[links.EVIDENTLY].endswith("/date=2013-06-03/evidently.html")
    assert got("drift_monitor", "decide") == evidently
    assert got("drift_monitor", "retrain_requested", True) == evidently
    assert got("drift_monitor", "check_quality") == {links.MODEL_PAGE: "/mlops/#trends"}  # by tag
    assert got("training", "validate_raw") == {
        links.DATA_DOCS: "/mlops/validation?start=2013-01-01&end=2013-01-15"}
    assert got("batch_scoring", "score_chunk", {"chunk": 0, "rows": 9})[links.MLFLOW_RUN].endswith(runs["2"])
    assert got("training", "build_features") == {}
    levels = task_outputs.upstream_levels(served_dags["drift_monitor"].get_task("retrain_requested"))
    assert levels == [["decide"], ["check_drift", "check_quality"], ["wait_for_predictions"]]


def test_links_of_a_dag_with_other_task_ids(state):
    """A DAG wired like drift_monitor under other names gets the same links."""
    from airflow.sdk import DAG, task
    from airflow.serialization.serialized_objects import DagSerialization
    from mlops_ui import task_outputs

    settings, _ = state
    with DAG("renamed", schedule=None, tags=["mlops", "monitoring"]) as dag:
        @task
        def measure() -> dict:
            return {}

        @task
        def weigh(m: dict) -> dict:
            return m

        @task.short_circuit
        def act(w: dict) -> bool:
            return True

        act(weigh(measure()))
    served = DagSerialization.from_dict(DagSerialization.to_dict(dag))
    values = {"measure": _verdict(settings), "weigh": {"retrain": True}}
    output = task_outputs.task_output(served.get_task("act"), True, values, None)
    assert output.monitoring and output.upstream == ({"weigh": values["weigh"]},
                                                     {"measure": values["measure"]})
    assert links.links_for(settings, output, NAME) == {
        links.EVIDENTLY: "/mlops/files/reports/drift/date=2013-06-03/evidently.html",
        links.MLFLOW_VERSION: f"http://127.0.0.1:5000/#/models/{NAME}/versions/1",
        links.MODEL_PAGE: "/mlops/#trends"}


def test_global_links_are_one_per_name():
    objs = links.global_links()
    assert [o.name for o in objs] == list(links.NAMES)
    assert len({type(o).__name__ for o in objs}) == len(objs)


# -- rendering -----------------------------------------------------------------------------------

def test_chart_is_valid_svg_with_gaps_thresholds_and_alerts():
    svg = charts.line_chart(["2013-06-01", "2013-06-02", "2013-06-03"],
                            [{"name": "share", "values": [0.1, None, 0.9], "alert": [False, False, True]}],
                            title="t <&>", hlines=[{"y": 0.5, "label": "limit"}], vlines=["2013-06-02"])
    root = ET.fromstring(svg)
    circles = root.findall("{http://www.w3.org/2000/svg}circle")
    assert len(circles) == 2 and circles[1].get("fill") == "#dc2626"
    assert "t &lt;&amp;&gt;" in svg and "limit" in svg
    empty = ET.fromstring(charts.line_chart(["2013-06-01"], [{"name": "x", "values": [None]}], title="e"))
    assert "no checks" in ET.tostring(empty, encoding="unicode")


def test_model_page_renders_everything_and_escapes(state):
    settings, _ = state
    lin = data.lineage(settings, date(2013, 6, 5))
    html = page.model_page(model=NAME, models=data.models(settings, NAME),
                           history=data.promotion_history(settings, NAME),
                           trend=trends.trend(trends.source_for(settings), 10),
                           partitions=data.partitions(settings), lineage=lin, selected="2013-06-05",
                           days=10, href=lambda uri: files.href(settings, uri))
    assert 'data-role="champion" data-version="2"' in html
    assert 'data-role="challenger" data-version="3"' in html
    assert html.count('class="event"') == 8 and "re-promoted after the fix" in html
    assert "bad &lt;b&gt;night&lt;/b&gt;" in html and "<b>night</b>" not in html
    assert 'ops-oncall<br><span class="muted">manual__rb</span>' in html  # who moved it
    assert f'href="/mlops/files/reports/gates/{NAME}-v2.md"' in html
    assert html.count("<svg") == 3 and "manifest and registry agree" in html
    assert 'data-step="ONNX sha256"' in html


def test_metric_deltas_come_from_the_gates_comparison_on_the_same_rows(state):
    """Each version's run metrics are on its own evaluation window: the challenger's deltas are
    its gate's head-to-head numbers against the champion it faced, and a version never
    compared with the current champion on the same rows shows no delta, and says so."""
    settings, _ = state
    models = data.models(settings, NAME)
    assert models["challenger"]["head_to_head"] == {
        "champion_version": "2", "metrics": {"roc_auc": 0.69},
        "champion_metrics": {"roc_auc": pytest.approx(0.74), "brier": None}}
    assert models["previous_champion"]["head_to_head"] is None  # the first model faced none
    html = page.model_page(model=NAME, models=models, history=[],
                           trend=trends.trend(trends.source_for(settings), 10), partitions=[],
                           lineage=None, selected=None, days=10,
                           href=lambda uri: files.href(settings, uri))
    boxes = html[html.index('data-role="champion"'):]
    champion = boxes[:boxes.index('data-role="challenger"')]
    challenger = boxes[boxes.index('data-role="challenger"'):boxes.index('data-role="previous_')]
    previous = boxes[boxes.index('data-role="previous_'):]
    previous = previous[:previous.index("</div>")]
    # the gate's -0.05 on the same rows, not the runs' 0.69 - 0.72 on different ones
    assert 'title="vs champion v2 on the same rows' in challenger and ">-0.0500<" in challenger
    assert "-0.0300" not in challenger and challenger.count('title="vs champion') == 1  # no Brier
    assert "Deltas: against champion v2 on the same rows" in challenger
    assert 'title="vs champion' not in champion and "compared" not in champion
    assert 'title="vs champion' not in previous and "+0.0" not in previous and "-0.0" not in previous
    assert "Not compared with champion v2 on the same rows" in previous


def test_model_page_shows_both_cards_side_by_side_and_a_missing_one_as_an_error(state):
    settings, _ = state
    models = data.models(settings, NAME)
    cards = data.model_cards(settings, NAME, models)
    assert cards["champion"]["text"] == CARD_V2 and cards["champion"]["error"] is None
    assert cards["challenger"]["text"] is None
    assert cards["challenger"]["error"].startswith(f"{NAME} v3 has no model card: nothing at ")
    html = page.model_page(model=NAME, models=models, history=data.promotion_history(settings, NAME),
                           trend=trends.trend(trends.source_for(settings), 10), partitions=[],
                           lineage=None, selected=None, days=10,
                           href=lambda uri: files.href(settings, uri), cards=cards)
    section = html[html.index('<section id="cards">'):html.index('<section id="serving">')]
    champion = section[section.index('data-role="champion"'):section.index('data-role="challenger"')]
    challenger = section[section.index('data-role="challenger"'):]
    assert 'data-version="2"' in champion and "# Model card: delay_model v2" in champion
    assert "Ranks &lt;things&gt; &amp; more" in champion and "<things>" not in html  # escaped
    assert "model-index:" in champion.split("<details>")[1]  # the front matter, folded
    assert f'src="/mlops/files/reports/cards/{NAME}-v2/shap_importance.png"' in champion
    assert f'href="/mlops/files/reports/cards/{NAME}-v2/datasheet.md"' in champion
    # the challenger has no card: a clear error, not a blank
    assert 'data-version="3"' in challenger and 'class="alert fail card-error"' in challenger
    assert f"{NAME} v3 has no model card" in challenger
    # the summary boxes and the promotion history link the cards that exist
    assert html.count(f'href="/mlops/files/reports/cards/{NAME}-v2/model_card.md"') >= 3
    assert "no model card" in html


def test_urls_default_and_configured(monkeypatch):
    monkeypatch.delenv("MLFLOW_UI_URL", raising=False)
    assert urls.mlflow_run("ab") == "http://127.0.0.1:5000/#/runs/ab"
    assert urls.page("/validation", day="2013-06-01", end=None) == "/mlops/validation?day=2013-06-01"


# -- the app: authentication and the report server --------------------------------------------

@pytest.fixture(scope="module")
def client(state):
    from airflow.api_fastapi.app import init_auth_manager
    from fastapi import FastAPI
    from fastapi.testclient import TestClient
    from mlops_ui.app import create_app

    settings, _ = state
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLOPS_STATE_URI", settings.state_uri)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        root, app = FastAPI(), create_app()
        init_auth_manager(root)  # Airflow's configured auth manager (simple), as the API server does
        root.mount("/mlops", app)
        yield TestClient(root), app


def test_app_refuses_unauthenticated_requests(client):
    c, _ = client
    for path in ("/mlops/", "/mlops/api/summary", f"/mlops/files/reports/gates/{NAME}-v2.md",
                 "/mlops/validation?day=2013-06-05"):
        r = c.get(path)
        assert r.status_code == 401, (path, r.status_code)
        assert "Gate report" not in r.text
        r = c.get(path, headers={"Cookie": "_token=not-a-jwt"})
        assert r.status_code == 403 and "Gate report" not in r.text, (path, r.status_code)
        r = c.get(path, headers={"Authorization": "Bearer not-a-jwt"})
        assert r.status_code == 403, (path, r.status_code)


def test_app_serves_authorised_requests(client):
    c, app = client
    app.dependency_overrides[app.state.auth_dependency] = lambda: None  # an authorised user
    try:
        r = c.get("/mlops/?days=10&partition=2013-06-05")
        assert r.status_code == 200 and 'data-version="2"' in r.text
        s = c.get("/mlops/api/summary?days=5").json()
        assert s["models"]["champion"]["version"] == "2" and s["selected"] == "2013-06-06"
        r = c.get(f"/mlops/files/reports/gates/{NAME}-v2.md")
        assert r.status_code == 200 and r.text.startswith("# Gate report")
        assert r.headers["x-content-type-options"] == "nosniff"
        r = c.get("/mlops/files/reports/drift/date=2013-06-01/evidently.html")
        assert r.status_code == 200 and "sandbox" in r.headers["content-security-policy"]
        assert c.get("/mlops/validation?day=2013-06-05").status_code == 200
        for bad in ("/mlops/files/reports/../data/landing/flights.csv",
                    "/mlops/files/reports/%2e%2e/data/predictions/date=2013-06-05/_manifest.json",
                    "/mlops/files/reports/..%2F..%2F..%2Fetc%2Fpasswd",
                    "/mlops/files/data/landing/flights.csv",
                    "/mlops/files/etc/passwd"):
            r = c.get(bad)
            assert r.status_code in (403, 404), (bad, r.status_code)
            assert "a,b" not in r.text and "root:" not in r.text
        assert c.get("/mlops/files/reports/gates/missing.md").status_code == 404
        assert c.get("/mlops/?partition=2013-06-07").status_code == 404
        assert c.get("/mlops/?partition=junk").status_code == 400
        assert c.get("/mlops/validation").status_code == 400
    finally:
        app.dependency_overrides.clear()


@pytest.fixture
def authorised(client):
    """The app's client as an authorised user (Airflow's auth dependency answered)."""
    c, app = client
    app.dependency_overrides[app.state.auth_dependency] = lambda: None
    try:
        yield c
    finally:
        app.dependency_overrides.clear()


def _policy(response) -> dict[str, list[str]]:
    """The Content-Security-Policy of a response: directive -> its values."""
    out = {}
    for part in response.headers["content-security-policy"].split(";"):
        if part.strip():
            name, *values = part.split()
            out[name] = values
    return out


def test_a_stored_svg_with_a_script_is_served_with_scripts_forbidden(authorised):
    r = authorised.get("/mlops/files/reports/drift/date=2013-06-01/plot.svg")
    assert r.status_code == 200 and r.headers["content-type"] == "image/svg+xml"
    assert r.content == EVIL_SVG
    assert r.headers["x-content-type-options"] == "nosniff"
    policy = _policy(r)
    assert policy["sandbox"] == []  # sandboxed with no allowance: no scripts, an opaque origin
    assert policy.get("script-src", policy.get("default-src")) == ["'none'"]


@pytest.mark.parametrize("path, html", [
    (f"reports/gates/{NAME}-v2.md", False), (f"reports/gates/{NAME}-v2.json", False),
    ("manifests/2013-06-05.json", False), ("reports/drift/date=2013-06-01/evidently.html", True),
    ("reports/drift/date=2013-06-01/raw.bin", False),
])
def test_every_served_file_is_sandboxed(authorised, path, html):
    r = authorised.get(f"/mlops/files/{path}")
    assert r.status_code == 200, (path, r.status_code)
    assert r.headers["x-content-type-options"] == "nosniff"
    policy = _policy(r)
    assert "sandbox" in policy and "allow-same-origin" not in policy["sandbox"]
    if html:  # a report's own scripts run, in an opaque origin that can reach nothing
        assert policy["sandbox"][0] == "allow-scripts" and policy["connect-src"] == ["'none'"]
        assert policy["form-action"] == ["'none'"]
    else:
        assert policy["sandbox"] == [] and policy["default-src"] == ["'none'"]


def test_unknown_types_are_sent_as_attachments(authorised):
    r = authorised.get("/mlops/files/reports/drift/date=2013-06-01/raw.bin")
    assert r.status_code == 200 and r.content == b"\x00\x01binary"
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["content-disposition"] == 'attachment; filename="raw.bin"'
    shown = authorised.get(f"/mlops/files/reports/gates/{NAME}-v2.md")
    assert "content-disposition" not in shown.headers  # a report is shown, not downloaded


def test_manifests_are_served_by_day(authorised):
    r = authorised.get("/mlops/files/manifests/2013-06-05.json")
    assert r.status_code == 200 and r.json()["model_version"] == "2"
    assert authorised.get("/mlops/files/manifests/2013-06-07.json").status_code == 404


@pytest.mark.parametrize("path", [
    "data/landing/flights/date=2013-06-05/logo.svg",
    "data/landing/flights/date=2013-06-05/report.json",
    "data/quarantine/flights/date=2013-06-05/20130605T010000Z/report.html",
    "data/quarantine/flights/date=2013-06-05/20130605T010000Z/report.json",
    "reports/%2e%2e/data/landing/flights/date=2013-06-05/logo.svg",
    "reports/gates/%2e%2e/%2e%2e/data/quarantine/flights/date=2013-06-05/20130605T010000Z/report.json",
    "reports/%252e%252e/data/landing/flights/date=2013-06-05/report.json",
    "reports/..%2Fdata%2Flanding%2Fflights%2Fdate=2013-06-05%2Freport.json",
    "reports/gates/.%2E/.%2E/data/landing/flights/date=2013-06-05/report.json",
    "manifests/..%2F..%2Flanding%2Fflights%2Fdate=2013-06-05%2Freport.json",
])
def test_supplier_files_and_traversals_are_not_served(authorised, path):
    r = authorised.get(f"/mlops/files/{path}")
    assert r.status_code in (403, 404), (path, r.status_code)
    assert "secret" not in r.text and "<script" not in r.text
    assert authorised.get(f"/mlops/files/reports/gates/{NAME}-v2.md").status_code == 200


def test_a_symlink_to_the_landing_zone_is_not_served(state, authorised):
    settings, _ = state
    landed = Path(locations.batch(settings.landing_uri, "flights", date(2013, 6, 5))).parent
    link = Path(settings.reports_uri) / "drift" / "date=2013-06-01" / "linked.svg"
    link.symlink_to(landed / "logo.svg")
    try:
        r = authorised.get("/mlops/files/reports/drift/date=2013-06-01/linked.svg")
        assert r.status_code == 403 and b"<script" not in r.content
    finally:
        link.unlink()


def test_model_page_says_when_the_registry_cannot_be_asked(authorised, unreachable):
    _, uri = unreachable
    r = authorised.get("/mlops/?days=10&partition=2013-06-05")
    assert r.status_code == 200
    assert "could not ask the registry: " in r.text and uri in r.text
    assert 'data-role="champion"' not in r.text  # no card that says "none"
    assert "manifest and registry" not in r.text  # neither agree nor disagree: unknown
    assert "re-promoted after the fix" in r.text  # the history does not need the registry
    s = authorised.get("/mlops/api/summary?partition=2013-06-05").json()
    assert s["models"] is None and s["registry_error"].startswith("could not ask the registry: ")
    assert s["lineage"]["registry_error"].startswith("could not ask the registry: ")


def test_the_plugin_builds_no_storage_path_itself():
    """Every storage layout comes from pipelines.core.locations: in the plugin, storage.join only
    appends below a place a locations function returned, no Settings root is read but the served
    trees and supplier zones (files.py) and the predictions root listed for partitions (data.py),
    and no layout name is spelled out."""
    import ast
    import re

    layout = re.compile(r"_manifest|date=|snapshot|(^|/)(gates|drift|validation|data_docs|history|"
                        r"landing|quarantine|predictions|registry|reports|training_sets)/")
    roots = {"files.py": {"reports_uri", "landing_uri", "quarantine_uri"},
             "data.py": {"predictions_uri", "mlflow_tracking_uri"}}
    problems = []
    for path in sorted((REPO / "plugins" / "mlops_ui").glob("*.py")):
        tree = ast.parse(path.read_text())
        docs = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr)}  # docstrings
        for node in ast.walk(tree):
            where = f"{path.name}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "storage.join":
                first = node.args[0] if node.args else None
                if not (isinstance(first, ast.Call) and ast.unparse(first.func).startswith("locations.")):
                    problems.append(f"{where}: {ast.unparse(node)}")
            elif isinstance(node, ast.Attribute) and node.attr.endswith("_uri") \
                    and ast.unparse(node.value) in ("settings", "self.settings") \
                    and node.attr not in roots.get(path.name, set()):
                problems.append(f"{where}: {ast.unparse(node)}")
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and id(node) not in docs and layout.search(node.value):
                problems.append(f"{where}: {node.value!r}")
    assert problems == [], "\n".join(problems)


def test_airflow_loads_the_plugin_once_and_lightly(tmp_path):
    """Through Airflow's own plugin loader: one plugin (the package is in .airflowignore), its
    menu entry, app and links, and no pandas, MLflow or the app's routes imported by loading it."""
    import json
    import subprocess

    probe = (
        "import json, sys\n"
        "from airflow import plugins_manager as pm\n"
        "plugins, errors = pm._get_plugins()\n"
        "views, _ = pm._get_ui_plugins()\n"
        "apps, _ = pm.get_fastapi_plugins()\n"
        "print(json.dumps({'plugins': [p.name for p in plugins], 'errors': errors, 'views': views,\n"
        "    'apps': [a['url_prefix'] for a in apps],\n"
        "    'links': [l.name for l in pm.get_global_operator_extra_links()],\n"
        "    'heavy': [m for m in ('pandas', 'mlflow', 'mlops_ui.app', 'mlops_ui.data', 'data', 'page')\n"
        "              if m in sys.modules]}))\n")
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path), "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                         timeout=120, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["plugins"] == ["mlops_ui"] and got["errors"] == {}
    assert got["views"] == [{"name": "Model", "href": "/mlops/", "url_route": "mlops-model",
                             "destination": "nav", "nav_top_level": True}]
    assert got["apps"] == ["/mlops"] and got["links"] == list(links.NAMES)
    assert got["heavy"] == []
