"""The model card of a registered version: Markdown with YAML front matter in the Hugging Face
model-card convention (`model-index` with the evaluation results), logged to the version's
MLflow run (`card/model_card.md`) and written to `reports/cards/`.

Every number is read, never recomputed: the metrics and their intervals, per slice too, and the
gates from the gate report (`gates/gate_report.json`, the run's metrics before the gates ran:
the same ONNX scores, the same functions), the training data from the datasheet the training run
logged, the explanation from its SHAP summary, the decision and approver from the promotion
history, the previous champion's drift verdicts from monitoring's records. The card is written when the version is registered and again after its gates, its
decision and its promotion or approval, so a rejected version has one too.
"""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Any

import yaml

from pipelines.core import locations, storage
from pipelines.core.config import Config
from pipelines.core.settings import Settings
from pipelines.model import registry

log = logging.getLogger(__name__)

RUN_FOLDER = "card"  # in the version's MLflow run; reports/cards/<model>-v<N>/ is a copy
MODEL_CARD, DATASHEET_JSON, DATASHEET_MD = "model_card.md", "datasheet.json", "datasheet.md"
SHAP_JSON, SHAP_PNG = "shap_importance.json", "shap_importance.png"
METRIC_NAMES = {"roc_auc": "ROC AUC", "pr_auc": "PR AUC (average precision)",
                "brier": "Brier score", "calibration_error": "Expected calibration error"}
DECISIONS = ("promote", "forced_promote", "rejected", "awaiting_approval", "approval_rejected",
             "rollback")


def run_path(name: str) -> str:
    """Where a card file is in the version's MLflow run."""
    return f"{RUN_FOLDER}/{name}"


def publish(settings: Settings, model: str, version: str, run_id: str,
            files: dict[str, bytes], to_run: bool = True) -> str:
    """Write card files to the version's reports folder and (`to_run`) its run's `card/`;
    returns the folder."""
    folder = locations.card_folder(settings, model, version)
    for name, data in files.items():
        storage.write_bytes(storage.join(folder, name), data)
    if to_run:
        with tempfile.TemporaryDirectory() as tmp:
            for name, data in files.items():
                with open(os.path.join(tmp, name), "wb") as fh:
                    fh.write(data)
            registry.client(settings).log_artifacts(run_id, tmp, RUN_FOLDER)
    return folder


def _read_json(uri: str) -> Any:
    return storage.read_json_if_exists(uri)


def gather(cfg: Config, settings: Settings, version: str, mv: Any = None) -> dict[str, Any]:
    """Everything the card of `version` says: the registry's version (`mv` if the caller has
    just read it) and run, the files its training run and gates wrote, the promotion history."""
    name = cfg.registry.model_name
    c = registry.client(settings)
    mv = mv if mv is not None else c.get_model_version(name, str(version))
    run = c.get_run(mv.run_id)
    folder = locations.card_folder(settings, name, str(version))
    history = sorted(registry.history(settings), key=lambda e: e.get("at") or "")
    gate_uri = locations.gate_report(settings, name, str(version))
    gate = _read_json(gate_uri)
    if gate is not None and str(gate.get("version")) != str(version):
        raise ValueError(f"{gate_uri} is the report of version {gate.get('version')}, not {version}")
    champion = gate.get("champion_version") if gate else None
    return {"model": name, "version": str(version), "run_id": mv.run_id,
            "tags": dict(mv.tags), "run_tags": dict(run.data.tags),
            "params": dict(run.data.params), "metrics": dict(run.data.metrics),
            "gate_report": gate, "gate_report_uri": gate_uri,
            "datasheet": _read_json(storage.join(folder, DATASHEET_JSON)),
            "datasheet_uri": storage.join(folder, DATASHEET_MD),
            "explanation": _read_json(storage.join(folder, SHAP_JSON)),
            "has_plot": storage.exists(storage.join(folder, SHAP_PNG)),
            "events": [e for e in history if e.get("model") == name
                       and str(e.get("to_version")) == str(version)],
            "champion_events": [e for e in history if champion and e.get("model") == name
                                and str(e.get("to_version")) == str(champion)],
            "champion_verdicts": champion_verdicts(settings, name, champion) if champion else []}


def champion_verdicts(settings: Settings, name: str, version: str) -> list[dict[str, Any]]:
    """The drift verdicts monitoring recorded for the intervals `version` of `name` scored
    (`locations.monitoring_record`), oldest first."""
    folder = locations.monitoring_records(settings, "verdicts")
    out = []
    for file in storage.listdir(folder):
        if not file.endswith(".json") or file.startswith("."):  # ".tmp-*": a write under way
            continue
        verdict = _read_json(storage.join(folder, file)) or {}
        if verdict.get("model") == name and str(verdict.get("model_version")) == str(version):
            out.append({k: verdict.get(k) for k in ("date", "drift", "drift_share", "reason")})
    return sorted(out, key=lambda v: str(v["date"]))


def fmt(v: Any) -> str:
    """A number as the card prints it (4 decimals; 3 significant digits below 0.001)."""
    if v is None:
        return "undefined"
    if isinstance(v, float):
        return f"{v:.3g}" if v and abs(v) < 1e-3 else f"{v:.4f}"
    return str(v)


def _ci(lo: Any, hi: Any) -> str:
    return "" if lo is None else f"[{lo:.4f}, {hi:.4f}]"


def metric_rows(src: dict[str, Any]) -> list[dict[str, Any]]:
    """The card's overall metrics: the gate report's (with intervals) once the gates ran, else
    the run's (the same scores and functions, no intervals yet)."""
    from pipelines.model.metrics import METRICS

    gate = src["gate_report"]
    if gate and gate.get("metric_intervals"):
        return [{"type": k, "name": METRIC_NAMES[k], **gate["metric_intervals"][k]} for k in METRICS]
    return [{"type": k, "name": METRIC_NAMES[k], "value": src["metrics"].get(k), "ci_low": None,
             "ci_high": None} for k in METRICS]


def status(src: dict[str, Any]) -> tuple[str, str | None]:
    """(status, who decided): the latest decision of the history, else the gate verdict."""
    decided = [e for e in src["events"] if e.get("action") in DECISIONS]
    if decided:
        e = decided[-1]
        return e["action"], e.get("user") or e.get("actor")
    gate = src["gate_report"]
    if gate is None:
        return "gates not run yet", None
    return f"gates {'passed' if gate['passed'] else 'failed'}, not decided yet", None


def front_matter(cfg: Config, src: dict[str, Any]) -> dict[str, Any]:
    """The Hugging Face card metadata: `model-index` holds the evaluation results."""
    card = cfg.governance.card
    sheet = src["datasheet"] or {}
    dataset = {"type": "tabular", "name": sheet.get("name") or src["tags"].get("training_window"),
               "split": f"evaluation (latest {cfg.training.eval_fraction:.0%} of the window "
                        f"by time)",
               "revision": src["tags"].get("training_data_sha256")}
    metrics = [{"type": m["type"], "name": m["name"], "value": m["value"], "verified": False}
               for m in metric_rows(src) if m["value"] is not None]
    meta: dict[str, Any] = {
        "license": card.license, "library_name": "sklearn",
        "pipeline_tag": "tabular-classification",
        "tags": ["tabular-classification", "onnx", "mlflow", f"model-version-{src['version']}"],
        "model-index": [{"name": f"{src['model']}-v{src['version']}", "results": [{
            "task": {"type": "tabular-classification", "name": "Binary classification"},
            "dataset": dataset, "metrics": metrics}]}]}
    if card.language:
        meta["language"] = card.language
    return meta


def render(cfg: Config, src: dict[str, Any]) -> str:
    card, gate, sheet, shap_ = cfg.governance.card, src["gate_report"], src["datasheet"], src["explanation"]
    state, who = status(src)
    tags, params = src["tags"], src["params"]
    lines = ["---", yaml.safe_dump(front_matter(cfg, src), sort_keys=False).rstrip(), "---", "",
             f"# Model card: {src['model']} v{src['version']}", "",
             f"- status: **{state}**" + (f" (by {who})" if who else ""),
             f"- estimator: `{params.get('estimator')}`; MLflow run `{src['run_id']}`; ONNX "
             f"sha256 `{tags.get('onnx_sha256')}`",
             f"- trained by: `{tags.get('airflow_run_id')}` (trigger: {tags.get('trigger')}); "
             f"git `{tags.get('git_commit')}`; params sha256 `{tags.get('params_sha256')}`",
             "", "## Intended use", "", card.intended_use, "", "## Out-of-scope use", ""]
    lines += [f"- {u}" for u in card.out_of_scope_use] or ["- not stated "
                                                          "(governance.card.out_of_scope_use)"]
    lines += ["", "## Training data", "",
              f"- window: `{tags.get('training_window')}`; rows: {params.get('train_rows')} "
              f"training, {params.get('eval_rows')} evaluation",
              f"- data version: landing batches sha256 `{tags.get('data_sha256')}`, DVC "
              f"`{tags.get('dvc_data_version')}`; training set sha256 "
              f"`{tags.get('training_data_sha256')}`",
              f"- feature service: `{tags.get('feature_service')}` (hash "
              f"`{tags.get('feature_service_hash')}`)"]
    if sheet:
        lines += [f"- datasheet: [datasheet.md](datasheet.md) (`{src['datasheet_uri']}`); "
                  f"positive rate {fmt(sheet['label']['positive_rate'])}; validation "
                  f"**{sheet['validation']['status']}**"]
    else:
        lines += ["- datasheet: **missing**: this version's run has no `card/datasheet.json`"]
    lines += ["", "## Evaluation", "",
              ("Metrics of the ONNX model on the evaluation set, from the gate report, with "
               f"{gate['metric_intervals']['roc_auc']['confidence']:.0%} bootstrap intervals."
               if gate and gate.get("metric_intervals") else
               "Metrics of the ONNX model on the evaluation set (the run's; intervals come with "
               "the gate report)."), "", "| metric | value | interval |", "|---|---|---|"]
    lines += [f"| {m['name']} | {fmt(m['value'])} | {_ci(m['ci_low'], m['ci_high'])} |"
              for m in metric_rows(src)]
    slices = (gate or {}).get("slice_metrics") or []
    if slices:
        lines += ["", f"Per slice ({slices[0]['metric']}):", "",
                  "| slice | rows | value | interval | note |", "|---|---|---|---|---|"]
        lines += [f"| {s['slice']} | {s['n']} | {fmt(s['value'])} | {_ci(s['ci_low'], s['ci_high'])} "
                  f"| {'below min size' if s['below_min_size'] else s['undefined'] or ''} |"
                  for s in slices]
    lines += ["", "## Gates", ""]
    if gate:
        lines += [f"Verdict: **{'PASS' if gate['passed'] else 'FAIL'}** against champion "
                  f"{'v' + str(gate['champion_version']) if gate['champion_version'] else 'none'}; "
                  f"report `{src['gate_report_uri']}`", "",
                  "| gate | verdict | value | threshold | detail |", "|---|---|---|---|---|"]
        lines += [f"| {c['gate']} | {'pass' if c['passed'] else 'FAIL'} | {fmt(c['value'])} | "
                  f"{fmt(c['threshold'])} | {c.get('detail', '')} |" for c in gate["checks"]]
        for rep in gate.get("fairness") or []:
            lines += ["", f"Fairness by `{rep['column']}` ({rep['metric']}): " + (
                f"largest gap {fmt(rep['gap'])} {_ci(rep['gap_ci_low'], rep['gap_ci_high'])}"
                if rep["gated"] else f"not gated: {rep['reason']}")]
    else:
        lines += ["The gates have not run yet."]
    lines += ["", "## Explanations", ""]
    if shap_:
        lines += [f"Global importance by SHAP ({shap_['method']}) on {shap_['sample_rows']} rows "
                  f"of the evaluation set. Values are in **{shap_['space']}** space: each row's "
                  f"contributions plus the base value ({shap_['base_value']:.4f}) equal the "
                  f"model's {shap_['space']} output (largest error "
                  f"{shap_['additivity_max_abs_error']:.1e}, tolerance "
                  f"{shap_['additivity_tolerance']:g}).", ""]
        if src["has_plot"]:
            lines += ["![SHAP global importance](shap_importance.png)", ""]
        lines += ["| input | mean abs SHAP | mean SHAP |", "|---|---|---|"]
        lines += [f"| {r['feature']} | {r['mean_abs_shap']:.4f} | {r['mean_shap']:+.4f} |"
                  for r in shap_["importance"][:cfg.governance.explain.top]]
    else:
        lines += ["No SHAP summary was logged with this version "
                  "(governance.explain.enabled, or a version not trained by this pipeline)."]
    lines += ["", "## Limitations", ""] + limitations(cfg, src)
    lines += ["", "## Approval", ""] + approval(src)
    return "\n".join(lines) + "\n"


def limitations(cfg: Config, src: dict[str, Any]) -> list[str]:
    gate, tags = src["gate_report"] or {}, src["tags"]
    out = [f"- Trained on `{tags.get('training_window')}` only; other periods are not evaluated."]
    small = [s for s in gate.get("slice_metrics") or [] if s["below_min_size"]]
    if small:
        out.append(f"- Slices below the minimum size ({cfg.gates.slices.min_size} rows), so not "
                   f"judged: " + ", ".join(f"{s['slice']} ({s['n']} rows)" for s in small))
    for rep in gate.get("fairness") or []:
        ungated = [g for g in rep["groups"] if not g["gated"]]
        if ungated:
            out.append(f"- Groups of `{rep['column']}` not gated for fairness: " + ", ".join(
                f"{g['group']} ({g['reason']})" for g in ungated))
    if not cfg.gates.fairness.columns:
        out.append("- No fairness groups are configured (gates.fairness.columns): disparities "
                   "between groups were not checked.")
    evidence = src["run_tags"].get("trigger_evidence")
    if evidence:
        out.append(f"- Retrained on a drift request of the previous champion: `{evidence[:600]}`")
    if gate.get("champion_version"):
        moves = "; ".join(f"{e.get('at', '')[:19]} {e['action']}" for e in src["champion_events"])
        out.append(f"- Previous champion v{gate['champion_version']}'s history: {moves or 'none'}")
        out.append(drift_history(gate["champion_version"], src.get("champion_verdicts") or []))
    return out


def drift_history(champion: str, verdicts: list[dict[str, Any]], shown: int = 10) -> str:
    """One line: how many intervals the previous champion's drift checks covered, and the last
    `shown` of those that found drift."""
    if not verdicts:
        return f"- Previous champion v{champion}'s drift verdicts: none recorded"
    drifted = [v for v in verdicts if v.get("drift")]
    line = (f"- Previous champion v{champion}'s drift verdicts: {len(verdicts)} intervals "
            f"checked ({verdicts[0]['date']} to {verdicts[-1]['date']}), {len(drifted)} with drift")
    if drifted:
        line += ": " + "; ".join(f"{v['date']} (drift share {fmt(v.get('drift_share'))}: "
                                 f"{v.get('reason')})" for v in drifted[-shown:])
    return line


def approval(src: dict[str, Any]) -> list[str]:
    if not src["events"]:
        return ["- Not decided yet."]
    return [f"- {e.get('at', '')[:19]} **{e['action']}** by {e.get('user') or e.get('actor')}"
            f"{': ' + e['reason'] if e.get('reason') else ''}" for e in src["events"]]


def write_card(cfg: Config, settings: Settings, version: str, mv: Any = None,
               files: dict[str, bytes] | None = None) -> str:
    """Render the card of `version` from its sources and publish it (run and reports), with
    `files` (the datasheet and SHAP summary the training run made) beside it: one artifact
    upload. `mv`: the registry's version, if the caller has just read it."""
    name = cfg.registry.model_name
    if files:  # the card reads them from the reports folder; uploaded with it below
        publish(settings, name, str(version), "", files, to_run=False)
    src = gather(cfg, settings, version, mv)
    publish(settings, src["model"], src["version"], src["run_id"],
            {**(files or {}), MODEL_CARD: render(cfg, src).encode("utf-8")})
    uri = locations.model_card(settings, src["model"], src["version"])
    log.info("model card: %s v%s (%s) -> %s", src["model"], src["version"], status(src)[0], uri)
    return uri


def read_card(settings: Settings, model: str, version: str) -> str:
    """A version's card, or a RegistryNotFound naming where it should be."""
    uri = locations.model_card(settings, model, version)
    if not storage.exists(uri):
        raise registry.RegistryNotFound(f"{model} v{version} has no model card at {uri}")
    return storage.read_bytes(uri).decode("utf-8")
