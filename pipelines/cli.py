"""One front door for people and `dvc.yaml`: `python -m pipelines.cli <stage> ...`.

Each sub-command calls the same function the Airflow task calls.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from pipelines.core.dates import date_range, to_date


def _ctx() -> tuple[Any, Any]:
    from pipelines.core.orchestration import stage

    return stage()


def cmd_ingest(a: argparse.Namespace) -> Any:
    from pipelines.data.ingest import ingest

    cfg, s = _ctx()
    return ingest(cfg, a.landing or s.landing_uri, to_date(a.start), to_date(a.end))


def cmd_validate(a: argparse.Namespace) -> Any:
    from pipelines.data.checks import validate_day

    cfg, s = _ctx()
    return validate_day(cfg, s, to_date(a.date))


def cmd_features(a: argparse.Namespace) -> Any:
    from pipelines.features.sources import build_feature_sources
    from pipelines.features.store import apply_definitions

    cfg, s = _ctx()
    apply_definitions(s)
    return sum(len(build_feature_sources(cfg, s, d)) for d in date_range(to_date(a.start), to_date(a.end)))


def cmd_apply(a: argparse.Namespace) -> Any:
    from pipelines.features.store import apply_definitions

    _, s = _ctx()
    apply_definitions(s)
    return {"applied": s.feature_repo}


def cmd_train(a: argparse.Namespace) -> Any:
    """Window -> validation -> features -> training set -> train -> gates -> promotion."""
    from pipelines.core import locations, storage
    from pipelines.data.checks import validate_training_set
    from pipelines.model.evaluation import evaluate_challenger
    from pipelines.model.registry import promote
    from pipelines.model.training import train_and_register
    from pipelines.model.training_set import build_training_set
    from pipelines.model.windows import (
        build_window_features,
        training_window,
        validate_window,
    )

    cfg, s = _ctx()
    window = training_window(cfg, {"train_start": a.start, "train_end": a.end}, [])
    validate_window(cfg, s, window)
    build_window_features(cfg, s, window)
    out = locations.training_set(s, window["start"], window["end"])
    ts = build_training_set(cfg, s, to_date(window["start"]), to_date(window["end"]), out)
    validate_training_set(cfg, s, ts)
    trained = train_and_register(cfg, s, ts, {"run_id": "cli", "trigger": "manual"})
    report = evaluate_challenger(cfg, s, trained["version"])
    if a.metrics_out:
        storage.write_json(a.metrics_out, {"training_set_sha256": ts["sha256"], **trained["metrics"]})
    if report["passed"] and a.promote:
        promote(s, cfg.registry.model_name, trained["version"], "cli", "cli training",
                report["report_uri"])
    return report


def cmd_score(a: argparse.Namespace) -> Any:
    """Score one day with the model the backfill policy (scoring.backfill_model) picks."""
    from pipelines.scoring.run import score_interval

    cfg, s = _ctx()
    return score_interval(cfg, s, to_date(a.date), None, "cli")


def cmd_drift(a: argparse.Namespace) -> Any:
    from pipelines.monitoring.checks import check_interval

    cfg, s = _ctx()
    return check_interval(cfg, s, to_date(a.date))


def cmd_rollback(a: argparse.Namespace) -> Any:
    from pipelines.model.registry import rollback

    cfg, s = _ctx()
    return rollback(s, cfg.registry.model_name, a.target, "cli", a.reason)


def cmd_draft_suite(a: argparse.Namespace) -> Any:
    from pipelines.data.validation import draft_suite

    return draft_suite(a.data, a.table, a.out)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(prog="python -m pipelines.cli", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    x = sub.add_parser("ingest", help="cut source tables into daily landing batches [start, end)")
    x.add_argument("--start", required=True); x.add_argument("--end", required=True)
    x.add_argument("--landing", default=None); x.set_defaults(fn=cmd_ingest)
    x = sub.add_parser("validate", help="validate one day's raw batches")
    x.add_argument("--date", required=True); x.set_defaults(fn=cmd_validate)
    x = sub.add_parser("features", help="feast apply + feature sources for [start, end)")
    x.add_argument("--start", required=True); x.add_argument("--end", required=True)
    x.set_defaults(fn=cmd_features)
    x = sub.add_parser("apply", help="feast apply on the feature repo")
    x.set_defaults(fn=cmd_apply)
    x = sub.add_parser("train", help="train, gate and (with --promote) promote a model")
    x.add_argument("--start"); x.add_argument("--end"); x.add_argument("--promote", action="store_true")
    x.add_argument("--metrics-out", default=None); x.set_defaults(fn=cmd_train)
    x = sub.add_parser("score", help="score one day with the champion")
    x.add_argument("--date", required=True); x.set_defaults(fn=cmd_score)
    x = sub.add_parser("drift", help="drift check of one scored day")
    x.add_argument("--date", required=True); x.set_defaults(fn=cmd_drift)
    x = sub.add_parser("rollback", help="move champion back to a version or 'previous'")
    x.add_argument("--target", default="previous"); x.add_argument("--reason", default="cli rollback")
    x.set_defaults(fn=cmd_rollback)
    x = sub.add_parser("draft-suite", help="profile a table and write a draft expectation suite")
    x.add_argument("--data", required=True); x.add_argument("--table", required=True)
    x.add_argument("--out", required=True); x.set_defaults(fn=cmd_draft_suite)
    args = p.parse_args(argv)
    result = args.fn(args)
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
