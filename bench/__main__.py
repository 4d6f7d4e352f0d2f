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
        result = module.run(a.rows) if a.rows else module.run()
        print(f"## {name}\n{json.dumps(result, indent=2)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
