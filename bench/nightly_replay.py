"""Replay one task of a finished `bench nightly` run in a fresh process and split its time.

`python -m bench.nightly_replay DAGS_FOLDER DAG_ID TASK_ID RUN_ID AIRFLOW_DB [MAP_INDEX
RESULTS_DIR]` (run by bench_nightly.py with the benchmark's environment, on every task of the
run in the order they ran). A LocalExecutor task is a process forked
from a worker that has Airflow imported, which then parses the DAG file and runs the task's
body; so here Airflow is imported before the clock starts, and then, timed:

- `parse`: the DAG file parsed (as the task process does before it runs the body);
- `imports`: time inside `import` statements while the body runs (outermost imports only);
- `setup`: time inside the functions that open a component (`SETUP`: the stage context, the
  Feast store, the MLflow client, the GX context, a DuckDB connection), their imports excluded;
- `work`: the rest of the body.

The task's inputs are what the replays of its upstream tasks returned (RESULTS_DIR, one JSON
file per task and map index), else its XCom inputs of that run from the metadata DB. So a
replay does what the run did (every stage is idempotent: a replay rewrites the same outputs),
on files the replays before it staged again: the run's own staged chunks and parts are gone
once it published. Prints one JSON line.
"""

from __future__ import annotations

import builtins
import functools
import inspect
import json
import sqlite3
import sys
import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

SETUP = [("pipelines.core.orchestration", "stage"), ("pipelines.features.store", "get_store"),
         ("pipelines.model.registry", "client"), ("pipelines.data.data_docs", "context"),
         ("pipelines.core.duck", "connect")]


_MISSING = object()


class Clock:
    """Outermost import time and set-up time (its own imports excluded) while armed."""

    def __init__(self) -> None:
        self.imports = self.setup = 0.0
        self._import_depth = self._setup_depth = 0
        self._setup_imports = 0.0
        self._real_import = builtins.__import__
        self._wrapped: set[tuple[str, str]] = set()

    def _import(self, *args: Any, **kwargs: Any) -> Any:
        if self._import_depth:
            return self._real_import(*args, **kwargs)
        self._import_depth += 1
        t0 = time.perf_counter()
        try:
            return self._real_import(*args, **kwargs)
        finally:
            self.imports += time.perf_counter() - t0
            self._import_depth -= 1
            self._wrap_setup()

    def _timed_setup(self, fn: Any) -> Any:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if self._setup_depth:
                return fn(*args, **kwargs)
            self._setup_depth += 1
            t0, i0 = time.perf_counter(), self.imports
            try:
                return fn(*args, **kwargs)
            finally:
                self.setup += (time.perf_counter() - t0) - (self.imports - i0)
                self._setup_depth -= 1
        wrapper.__bench_wrapped__ = True
        return wrapper

    def _wrap_setup(self, namespaces: list[dict[str, Any]] = ()) -> None:
        for module, name in SETUP:
            mod = sys.modules.get(module)
            if mod is not None and (module, name) not in self._wrapped:
                setattr(mod, name, self._timed_setup(getattr(mod, name)))
                self._wrapped.add((module, name))
            for ns in namespaces:  # a module that imported the function before the clock ran
                fn = ns.get(name)
                if fn is not None and getattr(fn, "__module__", None) == module and \
                        not getattr(fn, "__bench_wrapped__", False):
                    ns[name] = self._timed_setup(fn)

    def arm(self, namespaces: list[dict[str, Any]]) -> None:
        self._wrap_setup(namespaces)
        builtins.__import__ = self._import


def _xcom(db: str, dag_id: str, run_id: str, task_id: str, map_index: int | None) -> Any:
    con = sqlite3.connect(db)
    try:
        rows = con.execute("SELECT map_index, value FROM xcom WHERE dag_id=? AND run_id=? AND "
                           "task_id=? AND key='return_value' ORDER BY map_index",
                           (dag_id, run_id, task_id)).fetchall()
    finally:
        con.close()

    def load(raw: Any) -> Any:
        value = json.loads(raw) if isinstance(raw, (str, bytes)) else raw
        return json.loads(value) if isinstance(value, str) and value[:1] in "[{" else value

    values = {i: load(v) for i, v in rows}
    if map_index is not None:
        return values[map_index]
    if set(values) == {-1}:
        return values[-1]
    return [values[i] for i in sorted(values)]  # a mapped task's results, in map order


def _replayed(results: Path | None, task_id: str, mapped: bool) -> Any:
    """What the replays of `task_id` returned (a mapped task: the list, in map order)."""
    if results is None:
        return _MISSING
    if not mapped:
        f = results / f"{task_id}.json"
        return json.loads(f.read_text()) if f.exists() else _MISSING
    files = sorted(results.glob(f"{task_id}.*.json"), key=lambda f: int(f.name.split(".")[-2]))
    return [json.loads(f.read_text()) for f in files] if files else _MISSING


def _resolve(value: Any, db: str, dag_id: str, run_id: str, results: Path | None) -> Any:
    operator = getattr(value, "operator", None)
    if operator is None:
        return value
    mapped = type(operator).__name__.endswith("MappedOperator")
    got = _replayed(results, operator.task_id, mapped)
    if got is not _MISSING:
        return got
    return _xcom(db, dag_id, run_id, operator.task_id, None if mapped else -1)


def main(argv: list[str]) -> int:
    dags_folder, dag_id, task_id, run_id, db = argv[:5]
    index = int(argv[5]) if len(argv) > 5 else 0
    results = Path(argv[6]) if len(argv) > 6 else None
    from datetime import datetime

    import airflow.sdk  # noqa: F401  (the worker has it: not timed)
    from airflow.dag_processing.dagbag import DagBag

    t0 = time.perf_counter()
    dag = DagBag(dag_folder=dags_folder).dags[dag_id]
    parse = time.perf_counter() - t0
    task = dag.get_task(task_id)
    con = sqlite3.connect(db)
    start, logical = con.execute("SELECT data_interval_start, logical_date FROM dag_run WHERE "
                                 "dag_id=? AND run_id=?", (dag_id, run_id)).fetchone()
    con.close()
    when = datetime.fromisoformat(str(start)).replace(tzinfo=None)
    from datetime import UTC

    when = when.replace(tzinfo=UTC)
    mapped = type(task).__name__.endswith("MappedOperator")
    if mapped:
        fn, partial = task.python_callable, task.partial_kwargs
        kwargs = {k: _resolve(v, db, dag_id, run_id, results) for k, v in
                  (partial.get("op_kwargs") or {}).items()}
        (name, source), = task._get_specified_expand_input().value.items()
        kwargs[name] = _resolve(source, db, dag_id, run_id, results)[index]
        args: list[Any] = []
    else:
        fn = task.python_callable
        args = [_resolve(v, db, dag_id, run_id, results) for v in task.op_args or ()]
        kwargs = {k: _resolve(v, db, dag_id, run_id, results)
                  for k, v in (task.op_kwargs or {}).items()}
    context = {"data_interval_start": when, "logical_date": when, "run_id": f"replay-{run_id}",
               "params": {k: dag.params[k] for k in dag.params}, "dag_run": None,
               "outlet_events": defaultdict(SimpleNamespace), "ti": SimpleNamespace(
                   xcom_push=lambda **kw: None)}
    if any(p.kind is p.VAR_KEYWORD for p in inspect.signature(fn).parameters.values()):
        kwargs.update(context)
    clock = Clock()
    clock.arm([fn.__globals__])
    t0 = time.perf_counter()
    returned = fn(*args, **kwargs)
    total = time.perf_counter() - t0
    builtins.__import__ = clock._real_import
    if results is not None:  # what the replays downstream read
        name = f"{task_id}.{index}.json" if mapped else f"{task_id}.json"
        (results / name).write_text(json.dumps(returned, default=str))
    print(json.dumps({"dag": dag_id, "task": task_id, "parse_s": round(parse, 3),
                      "body_s": round(total, 3), "imports_s": round(clock.imports, 3),
                      "setup_s": round(clock.setup, 3),
                      "work_s": round(total - clock.imports - clock.setup, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
