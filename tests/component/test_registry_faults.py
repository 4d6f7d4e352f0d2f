"""Transient registry faults at every registry call of training, gating, promotion, scoring and
rollback: nothing is promoted that the gates did not pass, nothing is published, every champion
move is in the history, and the error names the registry and the cause.

The fault wraps the real MLflow client (MLflow on SQLite, real artifacts): each flow runs once
clean to list its registry calls, then once per call with a 503 injected at that call, from the
same starting state each time.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from support import (
    flights_training_set,
    isolated_settings,
    scoring_state,
    small_gates,
    with_params,
)

from pipelines.core import locations
from pipelines.core.config import load_config
from pipelines.model import promotion, registry
from pipelines.model.evaluation import evaluate_challenger
from pipelines.model.training import train_and_register

REPO = Path(__file__).resolve().parents[2]
NAME = "delay_model"
INJECTED = "503 Service Unavailable (injected)"


class Faults:
    """Counts registry calls across every client a flow creates; raises at call `fail_at`."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.fail_at, self.calls = fail_at, []

    def hit(self, what: str) -> None:
        from mlflow.exceptions import MlflowException

        n = len(self.calls)
        self.calls.append(what)
        if n == self.fail_at:
            raise MlflowException(INJECTED, error_code="TEMPORARILY_UNAVAILABLE")


class FaultyClient:
    """The real MlflowClient, with a fault before the chosen call."""

    def __init__(self, inner: Any, faults: Faults) -> None:
        self._inner, self._faults = inner, faults

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            self._faults.hit(f"{name}{args[1:3] if name.endswith('alias') else ''}")
            return attr(*args, **kwargs)

        return call


@pytest.fixture()
def inject(monkeypatch) -> Callable[[int | None], Faults]:
    """inject(k): every registry client and artifact download of the test counts calls and
    fails the k-th (None: count only)."""
    import mlflow.artifacts

    real_client, real_download = registry._mlflow_client, mlflow.artifacts.download_artifacts
    state: dict[str, Faults] = {"faults": Faults(None)}

    def client(uri: str) -> FaultyClient:
        return FaultyClient(real_client(uri), state["faults"])

    def download(*args: Any, **kwargs: Any) -> Any:
        state["faults"].hit("download_artifacts")
        return real_download(*args, **kwargs)

    monkeypatch.setattr(registry, "_mlflow_client", client)
    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", download)

    def arm(fail_at: int | None) -> Faults:
        state["faults"] = Faults(fail_at)
        return state["faults"]

    return arm


def _copy_state(src: Path, dst: Path) -> None:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)


def _champion(settings) -> str | None:
    mv = registry.by_alias(registry.client(settings), NAME, "champion")
    return None if mv is None else str(mv.version)


def _moves(settings) -> list[dict[str, Any]]:
    return [e for e in registry.history(settings) if e["action"] in
            ("promote", "forced_promote", "rollback")]


def _each_fault(inject, flow: Callable[[Any], Any], fresh: Callable[[], Any]
                ) -> Iterator[tuple[int, str, Exception | None, Any]]:
    """Run `flow(settings)` clean to list its calls, then with a fault at each call, each run
    on fresh settings (a copy of the starting state)."""
    calls = inject(None)
    flow(fresh())
    clean = list(calls.calls)
    assert clean, "the flow made no registry call"
    for k, what in enumerate(clean):
        settings = fresh()
        inject(k)
        try:
            flow(settings)
        except Exception as exc:  # noqa: BLE001 - examined by the caller
            yield k, what, exc, settings
        else:
            yield k, what, None, settings


def _names_the_registry(exc: Exception, settings) -> None:
    text = str(exc)
    assert INJECTED in text, text
    assert registry.safe_uri(settings.mlflow_tracking_uri) in text, text


@pytest.fixture(scope="module")
def trained_pair(tmp_path_factory) -> dict[str, Any]:
    """A weak champion (v1) and a challenger (v2) that clearly beats it, saved as a state folder
    every fault run starts from."""
    root = tmp_path_factory.mktemp("faults")
    base = small_gates(load_config(REPO / "params.yaml"))
    cfg = with_params(base, gates__compare__n_bootstrap=60, gates__slices__min_size=400,
                      gates__floors={"roc_auc": 0.6, "pr_auc": 0.2})
    training_set = flights_training_set(root, cfg, days=14)
    settings = isolated_settings(root / "state")
    weak = with_params(cfg, training__estimator__params={"n_estimators": 3, "max_depth": 1,
                                                         "random_state": 1})
    first = train_and_register(weak, settings, training_set, {"run_id": "weak"})
    registry.promote(settings, NAME, first["version"], "test", "baseline", None, forced=True)
    second = train_and_register(cfg, settings, training_set, {"run_id": "strong"})
    _copy_state(root / "state", root / "pristine")
    return {"cfg": cfg, "root": root, "training_set": training_set, "version": second["version"]}


def _fresh(trained_pair: dict[str, Any], start: str = "state") -> Callable[[], Any]:
    """Settings of a new copy of a saved state (its SQLite registry, history and reports). Each
    copy has its own tracking URI, so no cached MLflow store sees another run's database; the
    artifacts stay where MLflow recorded them (absolute paths), shared read-mostly."""
    import dataclasses
    import uuid

    root = trained_pair["root"]

    def fresh() -> Any:
        run = root / "runs" / uuid.uuid4().hex[:8]
        _copy_state(root / start, run)
        return dataclasses.replace(isolated_settings(run),
                                   mlflow_artifacts_uri=str(root / "state" / "artifacts"))

    return fresh


def test_gating_and_promotion_never_promote_on_a_registry_fault(inject, trained_pair, tmp_path):
    cfg, version = trained_pair["cfg"], trained_pair["version"]
    window = {"start": "2013-01-01", "end": "2013-01-15", "trigger": "manual", "evidence": None}

    def flow(settings) -> None:
        report = evaluate_challenger(cfg, settings, version)
        decided = promotion.conclude(cfg, settings, report, window, force=False, approval="auto",
                                     reason="fault test", actor="test")
        assert decided["decision"] == promotion.PROMOTE, report  # it passes when nothing fails
        promotion.promote_decided(cfg, settings, decided, actor="test")

    champion_move = None
    outcomes = list(_each_fault(inject, flow, _fresh(trained_pair)))
    for k, what, exc, settings in outcomes:
        assert exc is not None, f"a fault at call {k} ({what}) went unnoticed"
        _names_the_registry(exc, settings)
        moved = _champion(settings) == version
        moves = _moves(settings)
        if not moved:  # nothing promoted, nothing recorded as promoted
            assert _champion(settings) == "1" and [m["to_version"] for m in moves] == ["1"]
        else:  # the move itself happened before the fault: it is in the history
            champion_move = k if champion_move is None else champion_move
            assert [m["to_version"] for m in moves] == ["1", version]
            assert moves[-1]["gate_report"] == locations.gate_report(settings, NAME, version)
    # faults before the champion alias moved (reads, gates, the previous_champion move) promote
    # nothing; only read-backs after the move find it made
    assert champion_move is not None and champion_move > len(outcomes) // 2


def test_training_on_a_registry_fault_fails_with_the_cause_and_promotes_nothing(
        inject, trained_pair, tmp_path):
    cfg, training_set = trained_pair["cfg"], trained_pair["training_set"]

    def flow(settings) -> None:
        train_and_register(cfg, settings, training_set, {"run_id": "faulty"})

    for k, what, exc, settings in _each_fault(inject, flow, _fresh(trained_pair)):
        assert exc is not None, f"a fault at call {k} ({what}) went unnoticed"
        _names_the_registry(exc, settings)
        assert _champion(settings) == "1" and len(_moves(settings)) == 1


def test_rollback_on_a_registry_fault_never_loses_a_move(inject, trained_pair, tmp_path):
    version = trained_pair["version"]
    promoted = _fresh(trained_pair)()
    registry.promote(promoted, NAME, version, "test", "to roll back", None)
    name = Path(promoted.state_uri).relative_to(trained_pair["root"])

    def flow(settings) -> None:
        registry.rollback(settings, NAME, "previous", "test", "incident")

    for k, what, exc, settings in _each_fault(inject, flow, _fresh(trained_pair, str(name))):
        assert exc is not None, f"a fault at call {k} ({what}) went unnoticed"
        _names_the_registry(exc, settings)
        rolled = [m for m in _moves(settings) if m["action"] == "rollback"]
        if _champion(settings) == version:
            assert rolled == []  # not moved, not recorded
        else:
            assert _champion(settings) == "1" and [m["to_version"] for m in rolled] == ["1"]


def test_scoring_on_a_registry_fault_publishes_nothing(inject, tmp_path):
    from pipelines.scoring.io import read_manifest
    from pipelines.scoring.run import score_interval

    day = date(2013, 1, 9)
    with pytest.MonkeyPatch.context() as mp:
        for key in ("MLOPS_STATE_URI", "MLOPS_PARAMS", "FEAST_REGISTRY_PATH", "FEAST_ONLINE_PATH"):
            mp.setenv(key, os.environ.get(key, ""))
        env = scoring_state(tmp_path, date(2013, 1, 4), day, (date(2013, 1, 5), date(2013, 1, 8)),
                            {"chunk_rows": 500})
        cfg, settings = env["cfg"], env["settings"]

        def flow(_: Any) -> None:
            score_interval(cfg, settings, day, None, "fault-test")

        def fresh() -> Any:
            from pipelines.core import storage

            storage.remove(locations.predictions(settings, day), recursive=True)
            storage.remove(locations.staging(settings, day), recursive=True)
            return settings

        for k, what, exc, _ in _each_fault(inject, flow, fresh):
            assert exc is not None, f"a fault at call {k} ({what}) went unnoticed"
            _names_the_registry(exc, settings)
            assert read_manifest(settings, day) is None, f"published despite a fault at {what}"
