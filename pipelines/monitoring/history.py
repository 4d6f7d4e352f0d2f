"""Monitoring history: one SQLite table with one row per interval, feature and metric.

Drift checks, live quality and retraining decisions all land in `metrics`, so trends can be
queried with plain SQL and plotted. Each writer replaces its own rows of an interval in one
transaction (`record`), so a re-run of a day updates that day and never duplicates it.
Location: `$MLOPS_METRICS_DB`: a path or `sqlite:///path`, or a Postgres URL
(`postgresql://user:password@host:port/db`, for workers that share no disk); else
`<state>/monitoring/metrics.db`.
"""

from __future__ import annotations

import math
import os
import sqlite3
from collections.abc import Iterable
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.core import storage
from pipelines.core.intervals import Interval
from pipelines.core.settings import Settings

if TYPE_CHECKING:
    import pandas as pd

SCHEMA = """
CREATE TABLE IF NOT EXISTS metrics (
    interval      TEXT NOT NULL,  -- ISO day the value describes
    feature       TEXT NOT NULL,  -- a feature, or _overall / _prediction / _model / _decision ...
    metric        TEXT NOT NULL,
    value         REAL,
    source        TEXT NOT NULL,  -- drift | quality | decision: the writer that owns the row
    model_version TEXT,
    run_id        TEXT,
    PRIMARY KEY (interval, feature, metric)
)
"""
# Postgres: the same table; `interval` quoted (a type name there), values in double precision.
PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS metrics (
    "interval"    TEXT NOT NULL,
    feature       TEXT NOT NULL,
    metric        TEXT NOT NULL,
    value         DOUBLE PRECISION,
    source        TEXT NOT NULL,
    model_version TEXT,
    run_id        TEXT,
    PRIMARY KEY ("interval", feature, metric)
)
"""
Row = tuple[str, str, Any]  # (feature, metric, value)
_PG_PREFIXES = ("postgresql://", "postgresql+psycopg2://", "postgres://")


def is_postgres(url: str) -> bool:
    return url.startswith(_PG_PREFIXES)


def _configured() -> str:
    return os.environ.get("MLOPS_METRICS_DB", "").strip()


def db_path(settings: Settings) -> str:
    """Where the table lives: $MLOPS_METRICS_DB (a SQLite path, or a Postgres URL as given),
    else under the (local) state folder."""
    configured = _configured()
    if configured:
        return configured if is_postgres(configured) else configured.removeprefix("sqlite:///")
    if not storage.is_local(settings.state_uri):
        raise ValueError(f"state {settings.state_uri} is not local: set MLOPS_METRICS_DB to a "
                         "local SQLite path or a postgresql:// URL for the monitoring history")
    return f"{storage.local_path(settings.state_uri)}/monitoring/metrics.db"


_PG_ENGINES: dict[str, Any] = {}


def _pg_engine(url: str) -> Any:
    """A SQLAlchemy engine on the Postgres URL (no pool: tasks are short-lived processes)."""
    engine = _PG_ENGINES.get(url)
    if engine is None:
        from sqlalchemy import create_engine, text
        from sqlalchemy.exc import IntegrityError, ProgrammingError
        from sqlalchemy.pool import NullPool

        driver_url = "postgresql+psycopg2://" + url.split("://", 1)[1]
        engine = create_engine(driver_url, poolclass=NullPool)
        try:
            with engine.begin() as con:
                con.execute(text(PG_SCHEMA))
        except (IntegrityError, ProgrammingError):  # created concurrently by another worker
            pass
        _PG_ENGINES[url] = engine
    return engine


def _connect(settings: Settings) -> sqlite3.Connection:
    path = db_path(settings)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path, timeout=60, isolation_level=None)  # transactions made explicit
    con.execute(SCHEMA)
    return con


def _value(value: Any) -> float | None:
    if value is None or isinstance(value, str):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _key(interval: Interval | date | str) -> str:
    """An interval's key (`2013-06-01`, `2024-11-03T06Z`): what the `interval` column holds."""
    return interval if isinstance(interval, str) else interval.isoformat()


def record(settings: Settings, interval: Interval | date | str, source: str, rows: Iterable[Row],
           model_version: str | None = None, run_id: str | None = None) -> int:
    """Replace `source`'s rows of `interval` with `rows` (atomic, idempotent); returns the count."""
    day = _key(interval)
    values = [(day, f, m, _value(v), source, model_version, run_id) for f, m, v in rows]
    if is_postgres(db_path(settings)):
        return _pg_record(db_path(settings), day, source, values)
    con = _connect(settings)
    try:
        con.execute("BEGIN IMMEDIATE")
        con.execute("DELETE FROM metrics WHERE interval = ? AND source = ?", (day, source))
        con.executemany("INSERT OR REPLACE INTO metrics VALUES (?, ?, ?, ?, ?, ?, ?)", values)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    finally:
        con.close()
    return len(values)


def _pg_record(url: str, day: str, source: str, values: list[tuple]) -> int:
    from sqlalchemy import text

    keys = ("interval", "feature", "metric", "value", "source", "model_version", "run_id")
    with _pg_engine(url).begin() as con:  # one transaction: readers see old rows or new ones
        con.execute(text('DELETE FROM metrics WHERE "interval" = :day AND source = :source'),
                    {"day": day, "source": source})
        if values:
            con.execute(text(
                'INSERT INTO metrics VALUES (:interval, :feature, :metric, :value, :source, '
                ':model_version, :run_id) ON CONFLICT ("interval", feature, metric) DO UPDATE SET '
                "value = EXCLUDED.value, source = EXCLUDED.source, "
                "model_version = EXCLUDED.model_version, run_id = EXCLUDED.run_id"),
                [dict(zip(keys, v)) for v in values])
    return len(values)


def history(settings: Settings, start: Interval | date | str, end: Interval | date | str,
            source: str | None = None) -> pd.DataFrame:
    """Rows with interval key in [start, end] (optionally of one source), ordered by interval."""
    import pandas as pd

    url = db_path(settings)
    if is_postgres(url):
        from sqlalchemy import text

        sql = 'SELECT * FROM metrics WHERE "interval" BETWEEN :start AND :end'
        params: dict[str, Any] = {"start": _key(start), "end": _key(end)}
        if source:
            sql, params["source"] = sql + " AND source = :source", source
        with _pg_engine(url).connect() as con:
            return pd.read_sql_query(text(sql + ' ORDER BY "interval", feature, metric'), con,
                                     params=params)

    sql = "SELECT * FROM metrics WHERE interval BETWEEN ? AND ?"
    args: list[Any] = [_key(start), _key(end)]
    if source:
        sql, args = sql + " AND source = ?", [*args, source]
    con = _connect(settings)
    try:
        return pd.read_sql_query(sql + " ORDER BY interval, feature, metric", con, params=args)
    finally:
        con.close()


def drift_rows(verdict: dict[str, Any]) -> list[Row]:
    """A drift verdict as rows: per feature PSI/KS/threshold/weight/drifted, then the totals."""
    rows: list[Row] = []
    for name, stats in verdict.get("features", {}).items():
        rows += [(name, k, stats.get(k)) for k in ("psi", "ks", "threshold", "weight")]
        rows.append((name, "drifted", float(stats.get("drifted", False))))
    rows.append(("_prediction", "psi", verdict.get("prediction_psi")))
    rows.append(("_prediction", "threshold", verdict.get("thresholds", {}).get("prediction_psi")))
    for key in ("drift_share", "n_current", "n_reference", "sample_rows", "n_current_total"):
        rows.append(("_overall", key, verdict.get(key)))
    rows += [("_overall", "drift", float(bool(verdict.get("drift")))),
             ("_overall", "drift_share_threshold", verdict.get("thresholds", {}).get("drift_share")),
             ("_overall", "schema_issues", float(len(verdict.get("schema_issues", []))))]
    return rows


def quality_rows(quality: dict[str, Any]) -> list[Row]:
    """Live quality as rows: the labelled day (_model), its trailing window and the baseline."""
    rows: list[Row] = []
    for feature, key in (("_model", "daily"), ("_model_window", "window"), ("_model_baseline", "baseline")):
        rows += [(feature, metric, value) for metric, value in (quality.get(key) or {}).items()]
    rows.append(("_model_window", "decay", float(bool(quality.get("decay")))))
    return rows


def plot_history(settings: Settings, end: Interval | date, days: int, out_uri: str) -> str:
    """PNG of the last `days` days: PSI / threshold per feature, drift share, live quality."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    last = end.start.date() if isinstance(end, Interval) else end
    start = last - timedelta(days=days - 1)
    df = history(settings, start, end)
    df["interval"] = pd.to_datetime(df["interval"].str.replace(r"T(\d\d)Z$", r"T\1:00",
                                                               regex=True))
    wide = df.pivot_table(index="interval", columns=["feature", "metric"], values="value")
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(11, 9), sharex=True)
    fig.suptitle(f"monitoring {start} .. {_key(end)}")

    def series(feature: str, metric: str) -> Any:
        return wide[(feature, metric)].dropna() if (feature, metric) in wide.columns else None

    features = sorted({f for f, m in wide.columns if m == "psi" and not f.startswith("_")})
    ratios = {f: series(f, "psi") / series(f, "threshold") for f in features}
    top = sorted(ratios, key=lambda f: -ratios[f].max())[:8]
    for f in features:
        ax1.plot(ratios[f].index, ratios[f].clip(lower=1e-3), marker=".",
                 **({"label": f} if f in top else {"color": "0.8", "linewidth": 0.7}))
    pred, pred_t = series("_prediction", "psi"), series("_prediction", "threshold")
    if pred is not None and pred_t is not None and len(pred):
        pred_ratio = (pred / pred_t).dropna()  # days without a prediction PSI have a threshold
        ax1.plot(pred_ratio.index, pred_ratio.clip(lower=1e-3), "k--", label="prediction")
    ax1.axhline(1.0, color="red", linewidth=1)
    ax1.set_yscale("log")
    ax1.set_ylabel("PSI / threshold")
    share, share_t = series("_overall", "drift_share"), series("_overall", "drift_share_threshold")
    if share is not None:
        ax2.bar(share.index, share.values, color="tab:orange", label="weighted drifted share")
    if share_t is not None and len(share_t):
        ax2.axhline(float(share_t.iloc[-1]), color="red", linewidth=1, label="drift_share")
    retrain = series("_decision", "retrain")
    for when in ([] if retrain is None else retrain[retrain > 0].index):
        for ax in (ax1, ax2, ax3):
            ax.axvline(when, color="purple", linestyle=":", linewidth=1.5)
    ax2.set_ylabel("drift share")
    for metric, color in (("roc_auc", "tab:blue"), ("pr_auc", "tab:green"), ("calibration_error", "tab:red")):
        daily, window = series("_model", metric), series("_model_window", metric)
        base = series("_model_baseline", metric)
        if daily is not None:
            ax3.plot(daily.index, daily.values, ".", color=color, alpha=0.5)
        if window is not None:
            ax3.plot(window.index, window.values, "-", color=color, label=f"{metric} (window)")
        if base is not None and len(base):
            ax3.axhline(float(base.iloc[-1]), color=color, linestyle="--", linewidth=0.8)
    ax3.set_ylabel("live quality")
    ax3.set_title("dots: labelled day, lines: trailing window, dashed: evaluation", fontsize=8)
    for ax in (ax1, ax2, ax3):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, ncol=3, loc="upper left")
    if df.empty:
        ax1.text(0.5, 0.5, "no history yet", transform=ax1.transAxes, ha="center")
    fig.autofmt_xdate()
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return storage.write_bytes(out_uri, buf.getvalue())
