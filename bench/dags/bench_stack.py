"""DAGs of the stack benchmark (bench/bench_stack.py), loaded only when the stack is started
with MLOPS_STACK_EXTRA_DAGS=bench/dags; never part of the project's DAG folder.

- `bench_stack_scoring`: the batch-scoring stages (plan -> mapped score chunks -> publish) over a
  features file in the object store, so the chunks spread over the Celery workers.
- `bench_stack_noop`: 100 mapped tasks that do nothing: the stack's per-task overhead.
"""

from __future__ import annotations

from datetime import datetime, timezone

from airflow.sdk import dag, task

DAY = "2013-06-01"


def _settings(out_uri: str):
    import dataclasses

    from pipelines.core.settings import get_settings

    return dataclasses.replace(get_settings(), data_uri=out_uri)


@dag(dag_id="bench_stack_scoring", schedule=None, catchup=False, tags=["bench"],
     start_date=datetime(2024, 1, 1, tzinfo=timezone.utc), max_active_tasks=16,
     params={"features_uri": "", "onnx_uri": "", "out_uri": "", "model": {}})
def bench_stack_scoring():
    @task
    def plan(params=None) -> list[dict]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        from pipelines.core import storage
        from pipelines.core.config import load_config
        from pipelines.core.dates import to_date
        from pipelines.scoring.inputs import META
        from pipelines.scoring.parts import stage_chunks

        cfg = load_config(_settings(params["out_uri"]).params_path)
        fs, path = storage.resolve(params["features_uri"])
        with fs.open(path, "rb") as fh:
            entity = pq.ParquetFile(fh).iter_batches(batch_size=cfg.scoring.chunk_rows,
                                                      columns=["row_key", *META[1:]])
            frames = (pa.Table.from_batches([b]) for b in entity)
            return stage_chunks(_settings(params["out_uri"]), to_date(DAY), frames,
                                        cfg.scoring.chunk_rows)

    @task
    def score(chunk: dict, params=None) -> dict:
        import pyarrow.parquet as pq

        from pipelines.core import storage
        from pipelines.core.config import load_config
        from pipelines.core.dates import to_date
        from pipelines.model.onnx_model import OnnxScorer
        from pipelines.scoring.io import read_table
        from pipelines.scoring.parts import write_part

        settings = _settings(params["out_uri"])
        cfg, model = load_config(settings.params_path), params["model"]
        fs, path = storage.resolve(params["features_uri"])
        with fs.open(path, "rb") as fh:
            rows = pq.ParquetFile(fh).read_row_group(chunk["chunk"])
        keys = read_table(chunk["uri"], columns=["row_key"])["row_key"]
        if not keys.equals(rows["row_key"]):
            raise ValueError(f"feature rows of chunk {chunk['chunk']} do not match its entities")
        scorer = OnnxScorer(storage.read_bytes(params["onnx_uri"]), model["numeric"],
                            model["categorical"])
        return write_part(settings, to_date(DAY), chunk["chunk"], rows, model, scorer,
                                  cfg.scoring)

    @task
    def publish(chunks: list[dict], parts: list[dict], params=None) -> int:
        from pipelines.core.config import load_config
        from pipelines.core.dates import to_date
        from pipelines.scoring.publish import publish

        settings = _settings(params["out_uri"])
        out = publish(load_config(settings.params_path), settings, to_date(DAY),
                              chunks, list(parts), params["model"], "bench")
        return int(out["rows"])

    chunks = plan()
    publish(chunks, score.expand(chunk=chunks))


@dag(dag_id="bench_stack_noop", schedule=None, catchup=False, tags=["bench"],
     start_date=datetime(2024, 1, 1, tzinfo=timezone.utc), max_active_tasks=16)
def bench_stack_noop():
    @task
    def noop(i: int) -> None:
        return None

    noop.expand(i=list(range(100)))


bench_stack_scoring()
bench_stack_noop()
