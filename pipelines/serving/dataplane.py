"""What the V2 routes do (KServe calls this the data plane): readiness, metadata, inference.

`infer` is one request end to end: the version its alias serves now (taken once: a swap during
the request does not affect it; on the unversioned path the live routing picks the alias from
the request's sticky key, `model.routing.choose`), the V2 tensors decoded and checked against
the model's inputs,
`inference.prepare` (batch scoring's functions), `ServedModel.predict` (batch scoring's call),
the response encoded, the rows handed to the prediction log; timed and counted as KServe and
MLServer do (`metrics`).
"""

from __future__ import annotations

import gc
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version as package_version
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.core.config import Config
from pipelines.core.contracts import ModelReady
from pipelines.core.settings import Settings
from pipelines.model import routing
from pipelines.serving import inference, metrics, protocol
from pipelines.serving.model import AliasFollower, Repository, ServedModel
from pipelines.serving.predlog import LogRecord, PredictionLog
from pipelines.serving.protocol import InferRequest, RequestError
from pipelines.serving.routing import RoutingFollower
from pipelines.serving.shadow import ShadowJob, ShadowRunner

if TYPE_CHECKING:
    from feast import FeatureStore

    from pipelines.features.pit import ViewSpec

log = logging.getLogger(__name__)
OUTPUTS = {"probability": "FP64", "row_key": "BYTES"}
VARIANT_HEADER = "x-model-variant"  # the alias that answered (also `parameters.variant`)
VIEWS_TTL_S = 60.0  # how long a worker keeps a feature service's views (Feast caches 600 s)


@dataclass(frozen=True)
class Call:
    """An inference request as the HTTP layer hands it over (see `DataPlane.infer`)."""
    served: ServedModel
    routed: bool
    body: bytes
    header_length: str | None
    sticky_header: str | None
    started: float


Answer = tuple[bytes, dict[str, str]] | Exception


class DataPlane:
    """The server's state in one worker: followers, the Feast store, the prediction log."""

    def __init__(self, settings: Settings, cfg: Config) -> None:
        self.settings, self.cfg, self.name = settings, cfg, cfg.registry.model_name
        self.declared = inference.declared_inputs(cfg)
        self.repository = Repository(settings, cfg)
        self.routing = RoutingFollower(settings, cfg)
        sticky = cfg.serving.routing.sticky
        if sticky.input is not None and sticky.input not in self.declared:
            raise ValueError(f"serving.routing.sticky.input {sticky.input!r} is not an input "
                             f"of the model (inputs: {', '.join(self.declared)})")
        self.log = PredictionLog(settings, cfg.serving.log.batch_rows,
                                 settings.serving_log_flush_seconds)
        shadow = cfg.serving.shadow
        self.shadow = ShadowRunner(self.name, self._shadow_score, self.log, shadow.queue,
                                   shadow.timeout_seconds, shadow.threshold)
        self.store: FeatureStore | None = None
        self._views: dict[str, tuple[float, list[ViewSpec]]] = {}

    def start(self) -> None:
        from pipelines.features.store import get_store

        self.store = get_store(self.settings)  # refuses a registry that holds code
        self.repository.start()
        self.warm_up()
        self.routing.start()
        self.log.start()
        self.shadow.start()
        # what start-up made (libraries, registry, store: ~400,000 objects here) never becomes
        # garbage: frozen, a full collection no longer walks it (it took 210 ms, a pause that
        # now and then held a request: p99 at 100 requests/s 245 -> 87-144 ms)
        gc.freeze()

    def warm_up(self) -> None:
        """Read each served version's views, then ask the online store once for an entity no
        view holds, before the first request: Feast imports its online store's modules on its
        first read (about a second here), which the first caller of each worker would wait for."""
        assert self.store is not None
        views = [spec for f in self.repository.followers.values() if f.current is not None
                 for spec in self.views(inference.service_name(self.cfg, f.current))]
        if not views:
            return
        spec = views[0]
        try:
            self.store.get_online_features(
                features=[f"{spec.name}:{spec.features[0]}"],
                entity_rows=[{k: "__warm_up__" for _, k in spec.join_keys}])
        except Exception as exc:  # noqa: BLE001 - a request would raise it with its context
            log.warning("serving: warm-up read of the online store failed (%s: %s)",
                        type(exc).__name__, exc)

    def stop(self) -> None:
        self.repository.stop()
        self.routing.stop()
        self.shadow.stop()
        self.log.close()

    # -- health and metadata ----------------------------------------------------------------

    def ready(self) -> bool:
        return self.store is not None and self.repository.ready()

    def follower(self, model_name: str, model_version: str | None) -> AliasFollower:
        if model_name != self.name:
            raise RequestError(f"model {model_name!r} is not served here (models: {self.name})",
                               status=404)
        found = self.repository.find(model_version)
        if found is None:
            served = {a: f.current.version if f.current else None
                      for a, f in self.repository.followers.items()}
            raise RequestError(f"{model_name} version {model_version!r} is not served here "
                               f"(aliases and the versions they serve: {served})", status=404)
        return found

    def followers(self, model_name: str, model_version: str | None) -> list[AliasFollower]:
        """The alias a versioned path names, or every alias for the path without a version."""
        if model_version:
            return [self.follower(model_name, model_version)]
        self.follower(model_name, None)  # 404 for another model
        return list(self.repository.followers.values())

    def model_ready(self, model_name: str, model_version: str | None) -> tuple[bool, ModelReady]:
        """The model is ready when its first alias is loaded; a versioned path, when that
        alias is (an optional alias the registry does not hold is `absent`, not ready)."""
        followers = self.followers(model_name, model_version)
        loaded = followers[0].current is not None if model_version else self.repository.ready()
        body: ModelReady = {
            "name": model_name,
            "ready": self.store is not None and loaded,
            "versions": {f.alias: f.current.version if f.current else None for f in followers},
            "stale": [f.alias for f in followers if f.failure is not None],
            "absent": [f.alias for f in followers if f.absent]}
        return body["ready"], body

    def server_metadata(self) -> dict[str, Any]:
        return {"name": "airflow-mlops-serving", "version": package_version("airflow-mlops"),
                "extensions": ["binary_tensor_data"]}

    def model_metadata(self, model_name: str, model_version: str | None) -> dict[str, Any]:
        """V2 model metadata, plus what each alias serves and why a move was not followed."""
        followers = self.followers(model_name, model_version)
        if model_version:
            self._held(followers[0])
        return {
            "name": model_name,
            "versions": [f.current.version for f in followers if f.current is not None],
            "platform": "onnxruntime_onnx",
            "inputs": [{"name": n, "datatype": d, "shape": [-1]} for n, d in self.declared.items()],
            "outputs": [{"name": n, "datatype": d, "shape": [-1]} for n, d in OUTPUTS.items()],
            "parameters": {
                "served": {f.alias: f.current.info(self.cfg) if f.current else None
                           for f in followers},
                "load_failures": {f.alias: f.failure for f in followers if f.failure},
                "absent": [f.alias for f in followers if f.absent],
                # a whole view's features may be given instead of the store's (optional)
                "optional_inputs": [{"name": n, "datatype": d, "shape": [-1]}
                                    for n, d in self.supplied_inputs().items()],
                "unknown_entities": self.cfg.serving.unknown_entities,
                "missing_features": self.cfg.scoring.missing_features,
                "max_rows": self.cfg.serving.max_rows}}

    def views(self, service: str) -> list[ViewSpec]:
        """The feature views of `service` (`pit.service_views`), read again every VIEWS_TTL_S:
        reading them bypasses Feast's registry cache, too slow for every request."""
        from pipelines.features.pit import service_views

        cached = self._views.get(service)
        if cached is not None and time.monotonic() - cached[0] <= VIEWS_TTL_S:
            return cached[1]
        assert self.store is not None
        views = service_views(self.store, service)
        self._views[service] = (time.monotonic(), views)
        return views

    def supplied_inputs(self) -> dict[str, str]:
        """The feature columns a request may carry instead of the online store's values, for
        every version served here (`inference.supplied_inputs`)."""
        out: dict[str, str] = {}
        for follower in self.repository.followers.values():
            served = follower.current
            if served is not None and self.store is not None:
                views = self.views(inference.service_name(self.cfg, served))
                out.update(inference.supplied_inputs(views, served))
        return out

    # -- inference --------------------------------------------------------------------------

    def _held(self, follower: AliasFollower) -> None:
        """404 for an optional alias the registry does not hold now (nothing under it)."""
        if follower.absent and follower.current is None:
            raise RequestError(f"{self.name} {follower.alias}: the registry holds no "
                               f"{follower.alias!r} alias now, so nothing is served under it "
                               f"(it is followed: once set, it is loaded)", status=404)

    def served(self, model_name: str, model_version: str | None) -> ServedModel:
        """The version that answers this request (taken once)."""
        follower = self.follower(model_name, model_version)
        self._held(follower)
        served = follower.current
        if served is None or self.store is None:
            why = follower.failure["error"] if follower.failure else "loading"
            raise RequestError(f"{model_name} {follower.alias} is not loaded yet ({why})",
                               status=503)
        return served

    def sticky_key(self, request: InferRequest, sticky_header: str | None) -> str:
        """The key that keeps a caller on one variant: the header, or the first row's input;
        neither: the request id."""
        sticky = self.cfg.serving.routing.sticky
        key = sticky_header if sticky.header is not None else None
        if sticky.input is not None:
            first = request.columns[sticky.input][0]
            missing = first is None or (isinstance(first, float) and np.isnan(first))
            key = None if missing else str(first)
        return key or str(request.id)

    def _loaded(self, alias: str | None) -> ServedModel | None:
        follower = self.repository.followers.get(alias) if alias else None
        return follower.current if follower is not None else None

    def route(self, default: ServedModel, key: str) -> tuple[ServedModel, ServedModel | None]:
        """The version that answers an unversioned request (the live routing's choice for its
        sticky key, or `default` while the chosen alias has nothing loaded) and its shadow
        (the mirror alias, if the key falls in the mirrored share, is loaded and did not
        answer)."""
        live = self.routing.current
        served = self._loaded(routing.choose(live, key)) or default
        shadow = self._loaded(routing.mirrored(live, key))
        return served, shadow if shadow is not None and shadow.alias != served.alias else None

    def _shadow_score(self, job: ShadowJob) -> np.ndarray:
        """The shadow's probabilities for a mirrored request: its own features and inputs, or
        the primary's when it would prepare the very same ones."""
        assert self.store is not None
        if inference.same_inputs(self.cfg, job.primary, job.shadow):  # e.g. a retraining
            return job.shadow.predict(job.inputs, self.cfg.scoring.batch_rows)
        views = self.views(inference.service_name(self.cfg, job.shadow))
        inputs, _ = inference.prepare(self.cfg, self.store, views, job.shadow, job.columns)
        return job.shadow.predict(inputs, self.cfg.scoring.batch_rows)

    def infer(self, served: ServedModel, routed: bool, body: bytes, header_length: str | None,
              sticky_header: str | None, started: float) -> tuple[bytes, dict[str, str]]:
        """One V2 inference request; `served`: the version its path names (the default alias
        on the unversioned path, where `routed` lets the live routing choose);
        `sticky_header`: the value of `serving.routing.sticky.header`, if any; `started`:
        when the request arrived."""
        answer = self.infer_many([Call(served, routed, body, header_length, sticky_header,
                                       started)])[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def infer_many(self, calls: list[Call]) -> list[Answer]:
        """Requests that waited together for this worker, answered together: each decoded
        and routed on its own, then the requests that share a version and input columns
        prepared and scored as one (a row's features and score depend on that row alone, so
        each request gets what it would get alone, at one pass's fixed cost). A group that
        fails is answered request by request, so an error names its own request's rows and
        fails nobody else. Each answer: the response and its headers, or the exception."""
        answers: list[Answer | None] = [None] * len(calls)
        groups: dict[tuple, list[tuple[int, Call, ServedModel, InferRequest,
                                       ServedModel | None]]] = {}
        optional = self.supplied_inputs()  # the same for every request of the pass
        for i, call in enumerate(calls):
            served = call.served
            try:
                request = protocol.decode(call.body, call.header_length, self.declared,
                                          self.cfg.serving.max_rows, optional)
                request.id = request.id or uuid.uuid4().hex
                shadow = None
                if call.routed:
                    served, shadow = self.route(served, self.sticky_key(request,
                                                                        call.sticky_header))
            except Exception as exc:  # noqa: BLE001 - this request's answer
                answers[i] = self._failed(served, exc)
                continue
            key = (id(served), tuple(request.columns))
            groups.setdefault(key, []).append((i, call, served, request, shadow))
        for group in groups.values():
            if len(group) > 1:
                try:
                    done = self._infer(group[0][2], [g[3] for g in group],
                                       [g[1].started for g in group], [g[4] for g in group])
                except Exception:  # noqa: BLE001 - answered one by one below, with its cause
                    pass
                else:
                    metrics.BATCH.labels(self.name).observe(len(group))
                    for (i, _, served, _, _), out in zip(group, done):
                        metrics.SUCCESS.labels(self.name, served.version, served.alias).inc()
                        answers[i] = out
                    continue
            for i, call, served, request, shadow in group:
                metrics.BATCH.labels(self.name).observe(1)
                try:
                    (answers[i],) = self._infer(served, [request], [call.started], [shadow])
                except Exception as exc:  # noqa: BLE001 - this request's answer
                    answers[i] = self._failed(served, exc)
                else:
                    metrics.SUCCESS.labels(self.name, served.version, served.alias).inc()
        return answers  # type: ignore[return-value]

    def _failed(self, served: ServedModel, exc: Exception) -> Exception:
        status = str(exc.status) if isinstance(exc, RequestError) else "500"
        metrics.FAILURE.labels(self.name, served.version, served.alias, status).inc()
        return exc

    def _infer(self, served: ServedModel, requests: list[InferRequest], started: list[float],
               shadows: list[ServedModel | None]) -> list[tuple[bytes, dict[str, str]]]:
        """Requests with the same version and input columns, prepared and scored in one pass;
        each request's response, log record and shadow from its own rows."""
        cfg, store = self.cfg, self.store
        assert store is not None  # `served` checked it
        views = self.views(inference.service_name(cfg, served))
        columns = requests[0].columns if len(requests) == 1 else {
            c: np.concatenate([r.columns[c] for r in requests]) for c in requests[0].columns}
        inputs, unknown = inference.prepare(cfg, store, views, served, columns)
        for view, n in unknown.items():
            metrics.UNKNOWN.labels(self.name, view, cfg.serving.unknown_entities).inc(n)
        predicted = time.perf_counter()
        for at in started:
            metrics.PREPROCESS.labels(self.name).observe(predicted - at)
        probabilities = served.predict(inputs, cfg.scoring.batch_rows)
        if not np.isfinite(probabilities).all():  # as batch scoring: never a NaN prediction
            raise RuntimeError(f"{served.name} v{served.version} returned non-finite "
                               f"probabilities for request(s) "
                               f"{', '.join(str(r.id) for r in requests)}")
        encoding = time.perf_counter()
        for _ in requests:  # per request, as KServe's: each waited for the whole pass
            metrics.PREDICT.labels(self.name).observe(encoding - predicted)
        keys = inputs.table["row_key"].to_numpy(zero_copy_only=False)
        out, bounds, first = [], [], 0
        for request in requests:  # every response first: a request that fails here (e.g. an
            last = first + request.rows  # unknown output) leaves nothing logged to retry
            body_out, headers = protocol.encode(
                request, self.name, served.version,
                {"probability": ("FP64", probabilities[first:last]),
                 "row_key": ("BYTES", keys[first:last])}, {"variant": served.alias})
            headers[VARIANT_HEADER] = served.alias
            out.append((body_out, headers))
            bounds.append((first, last))
            first = last
        done, now = time.perf_counter(), datetime.now(UTC)
        for request, at, shadow, (first, last) in zip(requests, started, shadows, bounds):
            mine = inputs if len(requests) == 1 else inputs.slice(first, last)
            p = probabilities[first:last]
            if shadow is not None:  # logged with the shadow's answer, after it
                self.shadow.submit(ShadowJob(served, shadow, request.columns, mine, p,
                                             request.id, done - at, now))
            else:
                self.log.append(LogRecord(mine, p, served.described, request.id, served.alias,
                                          done - at, now))
        finished = time.perf_counter()
        for _ in requests:
            metrics.POSTPROCESS.labels(self.name).observe(finished - encoding)
        metrics.ROWS.labels(self.name, served.version, served.alias).inc(len(inputs))
        return out
