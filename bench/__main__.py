"""Benchmark runner: `python -m bench [name ...] [--rows N]`.

Each `bench/bench_<name>.py` defines `run(rows: int) -> dict` that measures the project's path
and a baseline side by side in the same process and returns their numbers and the ratio.
Benchmarks are never timed tests: they print, and the README records what they printed.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import platform
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
PROBE_LOOPS = 10_000_000  # 0.34 s of one core here at the fastest seen


def host_probe() -> dict[str, float]:
    """The same fixed pure-Python loop, timed, and the load average: printed before and after
    each benchmark. These machines share their host, whose speed moves between runs by more
    than many changes a benchmark measures (this loop took 0.34 to 0.55 s within two minutes
    on 2026-12-06, nothing else running): a run whose probe is slow ran on a slow host."""
    import time

    start, total = time.perf_counter(), 0
    for i in range(PROBE_LOOPS):
        total += i
    return {"probe_s": round(time.perf_counter() - start, 3),
            "load_average_1m": round(os.getloadavg()[0], 2)}


def main(argv: list[str] | None = None) -> int:
    here = Path(__file__).parent
    names = sorted(m.name[len("bench_"):] for m in pkgutil.iter_modules([str(here)])
                   if m.name.startswith("bench_"))
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("names", nargs="*", default=[], metavar="NAME",
                   help=f"benchmarks to run (default all): {', '.join(names)}")
    p.add_argument("--rows", type=int, default=None, help="override each benchmark's row count")
    a = p.parse_args(argv)
    unknown = sorted(set(a.names) - set(names))
    if unknown:
        p.error(f"unknown benchmark(s) {unknown}; choose from {names}")
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}")
    for name in a.names or names:
        module = importlib.import_module(f"bench.bench_{name}")
        before = host_probe()
        result = module.run(a.rows) if a.rows else module.run()
        result = {**result, "host": {"before": before, "after": host_probe()}}
        print(f"## {name}\n{json.dumps(result, indent=2)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
