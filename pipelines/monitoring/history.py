"""Monitoring history: one table with one row per interval, feature and metric.

Drift checks, live quality and retraining decisions all land in `metrics`, so trends can be
queried with plain SQL and plotted. Each writer replaces its own rows of an interval in one
transaction (`record`), so a re-run of a day updates that day and never duplicates it.
Location: `$MLOPS_METRICS_DB`: a path or `sqlite:///path`, or a Postgres URL
(`postgresql://user:password@host:port/db`, for workers that share no disk); else
`<state>/monitoring/metrics.db`. One SQLAlchemy path for both databases.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.core import storage
from pipelines.core.intervals import Interval
from pipelines.core.settings import Settings

if TYPE_CHECKING:
    import pandas as pd
    import sqlalchemy

Row = tuple[str, str, Any]  # (feature, metric, value)
_PG_PREFIXES = ("postgresql://", "postgresql+psycopg2://", "postgres://")
_ENGINES: dict[str, Any] = {}


def is_postgres(url: str) -> bool:
    return url.startswith(_PG_PREFIXES)


def db_path(settings: Settings) -> str:
    """Where the table lives: MLOPS_METRICS_DB (a SQLite path, or a Postgres URL as given),
    else under the (local) state folder."""
    configured = settings.metrics_db
    if configured:
        return configured if is_postgres(configured) else configured.removeprefix("sqlite:///")
    if not storage.is_local(settings.state_uri):
        raise ValueError(f"state {settings.state_uri} is not local: set MLOPS_METRICS_DB to a "
                         "local SQLite path or a postgresql:// URL for the monitoring history")
    return f"{storage.local_path(settings.state_uri)}/monitoring/metrics.db"


def _table() -> sqlalchemy.Table:
    from sqlalchemy import Column, Float, MetaData, String, Table

    return Table("metrics", MetaData(),
                 Column("interval", String, primary_key=True),  # ISO day the value describes
                 Column("feature", String, primary_key=True),  # or _overall, _model, ...
                 Column("metric", String, primary_key=True),
                 Column("value", Float(precision=53)),
                 Column("source", String, nullable=False),  # drift | quality | decision
                 Column("model_version", String), Column("run_id", String))


def _engine(settings: Settings) -> sqlalchemy.Engine:
    """One SQLAlchemy engine per database (no pool: tasks are short-lived processes), with the
    table created if missing. SQLite transactions take the write lock when they begin, so two
    writers queue instead of failing half-way."""
    from sqlalchemy import create_engine, event
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
    from sqlalchemy.pool import NullPool

    where = db_path(settings)
    engine = _ENGINES.get(where)
    if engine is not None:
        return engine
    if is_postgres(where):
        engine = create_engine("postgresql+psycopg2://" + where.split("://", 1)[1],
                               poolclass=NullPool)
    else:
        Path(where).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(f"sqlite:///{where}", poolclass=NullPool,
                               connect_args={"timeout": 60, "isolation_level": None})
        event.listen(engine, "begin", lambda con: con.exec_driver_sql("BEGIN IMMEDIATE"))
    try:
        _table().metadata.create_all(engine, checkfirst=True)
    except (IntegrityError, ProgrammingError, OperationalError):  # created concurrently
        _table().metadata.create_all(engine, checkfirst=True)
    _ENGINES[where] = engine
    return engine


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
    from sqlalchemy import and_, delete

    day = _key(interval)
    values = [{"interval": day, "feature": f, "metric": m, "value": _value(v), "source": source,
               "model_version": model_version, "run_id": run_id} for f, m, v in rows]
    engine, table = _engine(settings), _table()
    if engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    with engine.begin() as con:  # one transaction: readers see the old rows or the new ones
        con.execute(delete(table).where(and_(table.c.interval == day, table.c.source == source)))
        if values:
            upsert = insert(table)
            con.execute(upsert.on_conflict_do_update(
                index_elements=["interval", "feature", "metric"],
                set_={c: upsert.excluded[c] for c in ("value", "source", "model_version",
                                                      "run_id")}), values)
    return len(values)


def history(settings: Settings, start: Interval | date | str, end: Interval | date | str,
            source: str | None = None) -> pd.DataFrame:
    """Rows with interval key in [start, end] (optionally of one source), ordered by interval."""
    import pandas as pd
    from sqlalchemy import select

    table = _table()
    query = select(table).where(table.c.interval.between(_key(start), _key(end)))
    if source:
        query = query.where(table.c.source == source)
    query = query.order_by(table.c.interval, table.c.feature, table.c.metric)
    with _engine(settings).connect() as con:
        return pd.read_sql_query(query, con)


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
