"""The embedded default's environment, as `scripts/env.sh` sets it, for Python that starts
Airflow itself (the browser test's `airflow standalone`, `bench nightly`).

`scripts/env.sh` is the one place that says how the embedded default runs (executor,
parallelism, task heartbeat, paused-at-creation, thread limits, pickle loading off, ...): what
`make demo` and `make up` source is what these callers get, read from that file rather than
copied, with their own state folder, ports and the few settings they change on top.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import Path

ENV_SH = Path(__file__).resolve().parents[2] / "scripts" / "env.sh"
# set by bash itself, not by env.sh
_SHELL = frozenset({"_", "SHLVL", "PWD", "OLDPWD"})


def embedded_env(base: Mapping[str, str], before: Mapping[str, str] | None = None,
                 after: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment `. scripts/env.sh` leaves when sourced in `base` plus `before`, with
    `after` applied on top.

    `before` holds what env.sh keeps when already set and derives other values from (e.g.
    `MLOPS_STATE_URI`, `AIRFLOW_HOME`, `AIRFLOW__API__PORT`: the execution API's URL follows the
    port); `after` holds what env.sh sets unconditionally and a caller must still change (e.g.
    a DAG folder of its own) and settings that only the caller has.
    """
    start = {**base, **(before or {})}
    out = subprocess.run(["bash", "-c", '. "$1" >&2 && env -0', "env.sh", str(ENV_SH)],
                         env=start, capture_output=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"sourcing {ENV_SH} failed (exit {out.returncode}): "
                           f"{out.stderr.decode(errors='replace')[-2000:]}")
    env = dict(item.split("=", 1) for item in out.stdout.decode().split("\0") if "=" in item)
    for name in _SHELL:  # as the caller had them
        if name in start:
            env[name] = start[name]
        else:
            env.pop(name, None)
    env.update(after or {})
    return env
