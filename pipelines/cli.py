"""One front door for people and `dvc.yaml`: `python -m pipelines.cli <stage> ...`.

Each sub-command runs the same stage functions, in the same order, as the Airflow DAG it
stands for: `train` is the `training` DAG (validation, features, training set, training, gates,
decision, promotion), `score` the `batch_scoring` DAG, `materialize` the
`feature_materialization` DAG, `monitor` the `drift_monitor` DAG. Exit codes: 0 done, 1 the
stage failed (the message names the cause), 3 the gates rejected the model (recorded).
`--date` names a data interval: a date in it (`2013-06-01`) or its key (`2024-11-03T06Z`).
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import sys
from typing import Any

from pipelines.core.dates import to_date

EXIT_FAILED, EXIT_REJECTED = 1, 3


def _ctx() -> tuple[Any, Any]:
    from pipelines.core.orchestration import stage

    return stage()


def _user() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return None


def cmd_ingest(a: argparse.Namespace) -> Any:
    from pipelines.data.ingest import ingest

    cfg, s = _ctx()
    return ingest(cfg, a.landing or s.landing_uri, to_date(a.start), to_date(a.end))


def cmd_validate(a: argparse.Namespace) -> Any:
    from pipelines.data.checks import validate_interval

    cfg, s = _ctx()
    return validate_interval(cfg, s, a.date)


def cmd_features(a: argparse.Namespace) -> Any:
    from pipelines.features.sources import build_feature_sources
    from pipelines.features.store import apply_definitions

    cfg, s = _ctx()
    apply_definitions(s)
    return sum(len(build_feature_sources(cfg, s, iv))
               for iv in cfg.grain.days(to_date(a.start), to_date(a.end)))


def cmd_apply(a: argparse.Namespace) -> Any:
    from pipelines.features.store import apply_definitions

    _, s = _ctx()
    apply_definitions(s)
    return {"applied": s.feature_repo}


def cmd_materialize(a: argparse.Namespace) -> Any:
    """The `feature_materialization` DAG for one day."""
    from pipelines.data.checks import validate_interval
    from pipelines.features.online import check_skew, materialize
    from pipelines.features.sources import build_sources_for_interval

    cfg, s = _ctx()
    day = cfg.grain.interval(a.date)
    validate_interval(cfg, s, day)
    build_sources_for_interval(cfg, s, day)
    done = materialize(cfg, s, day)
    return {"materialized": done, "skew": check_skew(cfg, s, done["as_of"])}


def cmd_train(a: argparse.Namespace) -> Any:
    """The `training` DAG: window -> validation -> features -> training set -> train -> gates ->
    decision -> promotion (with --promote; without it a passing model waits for approval)."""
    from pipelines.model.evaluation import evaluate_challenger
    from pipelines.model.promotion import (
        FORCED,
        PROMOTE,
        REJECT,
        conclude,
        promote_decided,
        summary,
    )
    from pipelines.model.training import train_and_register
    from pipelines.model.training_set import build_validated_training_set
    from pipelines.model.windows import (
        build_window_features,
        training_window,
        validate_window,
    )

    cfg, s = _ctx()
    window = training_window(cfg, {"train_start": a.start, "train_end": a.end}, [])
    validate_window(cfg, s, window)
    build_window_features(cfg, s, window)
    ts = build_validated_training_set(cfg, s, window)
    trained = train_and_register(cfg, s, ts, {"run_id": "cli", "trigger": window["trigger"]})
    report = evaluate_challenger(cfg, s, trained["version"])
    if a.metrics_out:
        from pipelines.core import storage

        storage.write_json(a.metrics_out, {"training_set_sha256": ts["sha256"], **trained["metrics"]})
    decided = conclude(cfg, s, report, window, force=a.force,
                       approval="auto" if a.promote else "manual", reason=a.reason,
                       actor="cli", user=_user())
    print(f"train: {summary(decided, report['failed'])}", file=sys.stderr)
    out: dict[str, Any] = {"gates": report, "decision": decided}
    if decided["decision"] in (PROMOTE, FORCED):
        out["promotion"] = promote_decided(cfg, s, decided, actor="cli", user=_user())
    out["exit"] = EXIT_REJECTED if decided["decision"] == REJECT else 0
    return out


def cmd_score(a: argparse.Namespace) -> Any:
    """The `batch_scoring` DAG for one day, with the model the backfill policy picks."""
    from pipelines.scoring.run import score_day

    cfg, s = _ctx()
    return score_day(cfg, s, a.date, "cli", a.backfill_model)


def cmd_monitor(a: argparse.Namespace) -> Any:
    """The `drift_monitor` DAG for one day: drift, live quality, the retraining decision."""
    from pipelines.monitoring.checks import check_interval, check_quality
    from pipelines.monitoring.decision import decide, plot

    cfg, s = _ctx()
    day = cfg.grain.interval(a.date)
    out = {"drift": check_interval(cfg, s, day, None, "cli"),
           "quality": check_quality(cfg, s, day, "cli"),
           "decision": decide(cfg, s, day, "cli")}
    out["history_plot"] = plot(cfg, s, day)
    return out


def cmd_rollback(a: argparse.Namespace) -> Any:
    from pipelines.model.registry import rollback
    from pipelines.model.routing import roll_back_routing

    cfg, s = _ctx()
    routing = roll_back_routing(s, cfg, "cli", a.reason, user=_user())  # blue-green first
    event = rollback(s, cfg.registry.model_name, a.target, "cli", a.reason, user=_user())
    return {**event, "routing": routing}


def cmd_promote(a: argparse.Namespace) -> Any:
    """The `promote` DAG: a version (or the challenger) by hand; its verdict must be pass."""
    from pipelines.model.promotion import promote_approved

    cfg, s = _ctx()
    return promote_approved(s, cfg.registry.model_name, a.version, "cli", a.reason,
                            force=a.force, user=_user(), cfg=cfg)


def cmd_draft_suite(a: argparse.Namespace) -> Any:
    """A raw table's suite from its data (--data, --table), or a derived output's suite from
    the configuration (--output training_set | predictions; after `feast apply`)."""
    if bool(a.data) == bool(a.output):
        raise ValueError("draft-suite: give --data (and --table) for a raw table's suite, or "
                         "--output training_set | predictions for a derived output's")
    if a.output:
        from pipelines.core import storage
        from pipelines.scoring.suites import draft_output_suite

        cfg, s = _ctx()
        suite = draft_output_suite(cfg, s, a.output)
        storage.write_json(a.out, suite)
        return {"suite": a.out, "expectations": len(suite["expectations"])}
    if not a.table:
        raise ValueError("draft-suite --data needs --table (the suite's name)")
    from pipelines.data.validation import draft_suite

    return draft_suite(a.data, a.table, a.out)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipelines.cli", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true", help="show the traceback of a failure")
    sub = p.add_subparsers(dest="cmd", required=True)

    def add(name: str, fn: Any, help_: str, *args: tuple[str, dict[str, Any]]) -> None:
        x = sub.add_parser(name, help=help_)
        for flag, kw in args:
            x.add_argument(flag, **kw)
        x.set_defaults(fn=fn)

    req, opt = {"required": True}, {"default": None}
    add("ingest", cmd_ingest, "cut source tables into daily landing batches [start, end)",
        ("--start", req), ("--end", req), ("--landing", opt))
    add("validate", cmd_validate, "validate the raw batches a run for one day reads",
        ("--date", req))
    add("features", cmd_features, "feast apply + feature sources for [start, end)",
        ("--start", req), ("--end", req))
    add("apply", cmd_apply, "feast apply on the feature repo")
    add("materialize", cmd_materialize, "the feature_materialization DAG for one day",
        ("--date", req))
    add("train", cmd_train, "the training DAG: train, gate and (with --promote) promote",
        ("--start", opt), ("--end", opt), ("--promote", {"action": "store_true"}),
        ("--force", {"action": "store_true", "help": "promote even if a gate fails (recorded)"}),
        ("--reason", {"default": "cli training"}), ("--metrics-out", opt))
    add("score", cmd_score, "the batch_scoring DAG for one day", ("--date", req),
        ("--backfill-model", {"default": None, "choices": ["current", "champion_at_interval"]}))
    add("monitor", cmd_monitor, "the drift_monitor DAG for one day", ("--date", req))
    add("drift", cmd_monitor, "alias of monitor", ("--date", req))
    add("rollback", cmd_rollback, "move champion back to a version or 'previous'",
        ("--target", {"default": "previous"}), ("--reason", {"default": "cli rollback"}))
    add("promote", cmd_promote, "promote a version (or 'challenger') by hand",
        ("--version", {"default": "challenger"}), ("--reason", req),
        ("--force", {"action": "store_true"}))
    add("draft-suite", cmd_draft_suite, "write a draft expectation suite: of a raw table from "
        "its data (--data, --table), or of a derived output from the configuration (--output)",
        ("--data", opt), ("--table", opt), ("--out", req),
        ("--output", {"default": None, "choices": ["training_set", "predictions"]}))
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    try:
        result = args.fn(args)
    except Exception as exc:  # noqa: BLE001 - one clear line (the traceback with --debug)
        if args.debug:
            raise
        print(f"error: {args.cmd}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    code = result.pop("exit", 0) if isinstance(result, dict) else 0
    print(json.dumps(result, indent=2, default=str))
    return code


if __name__ == "__main__":
    sys.exit(main())
