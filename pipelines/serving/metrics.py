"""Prometheus metrics of the server, named as the V2 servers name them, summed over workers.

- KServe's latency histograms (`kserve/metrics.py`), label `model_name`:
  `request_preprocess_seconds` (decode, entity rows, online + request-time features, model
  inputs), `request_predict_seconds` (onnxruntime), `request_postprocess_seconds` (encode,
  prediction-log hand-off).
- MLServer's request counters (`mlserver/handlers/dataplane.py`): `model_infer_request_success`
  and `model_infer_request_failure` (exposed with `_total`), with KServe's `model_name` and the
  version and variant (alias) that answered; a failure also has its HTTP `status`.
- This server's own: rows scored, requests answered per pass
  (`serving_batch_requests`: those that waited while the worker was busy go together), rows
  with an unknown entity per view and policy, the version each alias serves in each worker
  (`serving_model_info`, 1 = served), load failures, whether an alias is stale (its last
  move could not be followed), the routing shares in force and failed reads of the routing
  document, the shadow's outcomes, queue and disagreement with the primary (|dp| histogram,
  label disagreements), the prediction log's rows.

With several workers the launcher sets PROMETHEUS_MULTIPROC_DIR: each process writes its
values there and `/metrics` (any worker) sums counters and histograms over all of them; gauges
keep one series per live worker (`pid` label) where a sum would mean nothing.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

# Whether this process's values are multiprocess files is decided when prometheus_client is
# first imported (here, before Feast, whose import sets the variable to a folder of its own)
MULTIPROC_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
MODEL = ["model_name"]
ANSWER = ["model_name", "model_version", "variant"]
# a single-row request takes about a millisecond; batches of max_rows up to a second
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

PREPROCESS = Histogram("request_preprocess_seconds", "pre-process request latency", MODEL,
                       buckets=BUCKETS)
PREDICT = Histogram("request_predict_seconds", "predict request latency", MODEL,
                    buckets=BUCKETS)
POSTPROCESS = Histogram("request_postprocess_seconds", "post-process request latency", MODEL,
                        buckets=BUCKETS)
SUCCESS = Counter("model_infer_request_success", "Model infer request success count", ANSWER)
FAILURE = Counter("model_infer_request_failure", "Model infer request failure count",
                  [*ANSWER, "status"])
ROWS = Counter("model_infer_rows", "Rows scored", ANSWER)
BATCH = Histogram("serving_batch_requests",
                  "Requests answered by one pass of a worker (those that waited together)",
                  MODEL, buckets=(1, 2, 4, 8, 16, 32, 64))
UNKNOWN = Counter("serving_unknown_entity_rows",
                  "Rows for which a feature view had no online value (unknown entity, missing "
                  "join key or expired)", ["model_name", "view", "policy"])
MODEL_INFO = Gauge("serving_model_info", "1 for the version an alias serves in this worker",
                   ["model_name", "alias", "version", "onnx_sha256"],
                   multiprocess_mode="liveall")
LOAD_FAILURES = Counter("serving_model_load_failures",
                        "Failed attempts to follow an alias (the previous version stays)",
                        ["model_name", "alias", "version"])
STALE = Gauge("serving_model_stale",
              "1 while the alias's last move could not be followed (see the model metadata)",
              ["model_name", "alias"], multiprocess_mode="livemax")
ROUTING_SHARE = Gauge("serving_routing_share",
                      "Share of unversioned requests routed to each variant in this worker",
                      ["model_name", "variant"], multiprocess_mode="livemax")
ROUTING_FAILURES = Counter("serving_routing_failures",
                           "Reads of the routing document that failed (the routing is kept)",
                           ["model_name"])
SHADOW = ["model_name", "variant"]  # variant: the mirror alias
SHADOW_REQUESTS = Counter("serving_shadow_requests",
                          "Mirrored requests by outcome (ok, error, timeout, busy, dropped)",
                          [*SHADOW, "status"])
SHADOW_PENDING = Gauge("serving_shadow_pending_requests", "Mirrored requests waiting",
                       multiprocess_mode="livesum")
SHADOW_DIFF = Histogram("serving_shadow_abs_diff",
                        "|shadow probability - primary probability| per row", SHADOW,
                        buckets=(0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0))
SHADOW_ROWS = Counter("serving_shadow_rows", "Rows scored by the shadow", SHADOW)
SHADOW_DISAGREE = Counter("serving_shadow_label_disagreements",
                          "Rows whose shadow label differs from the primary's", SHADOW)
LOG_ROWS = Counter("serving_prediction_log_rows", "Prediction log rows, by outcome", ["status"])
LOG_PENDING = Gauge("serving_prediction_log_pending_rows", "Rows waiting to be written",
                    multiprocess_mode="livesum")


def render() -> tuple[bytes, str]:
    """The exposition of every worker's metrics (or this process's, with one worker)."""
    if MULTIPROC_DIR:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=MULTIPROC_DIR)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
