"""`dvc repro` reproduces a registered model: from the version's lineage back to the same metrics.

Runs the real `dvc.yaml` (ingest -> train) in a throw-away copy of the repository with small
params, then follows the registered version's tags to the data version, feature service and
commit, and re-runs the train stage with `dvc repro -f -s train`: same training data hash,
same metrics, the same ONNX bytes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
    return out.stdout


def test_dvc_repro_reproduces_the_registered_model(tmp_path):
    repo = tmp_path / "repo"
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout.split()
    for f in files:
        (repo / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, repo / f)
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    raw["ingest"] = {"start": "2013-01-01", "end": "2013-01-17"}
    raw["training"]["initial_window"] = {"start": "2013-01-01", "end": "2013-01-15"}
    raw["training"]["estimator"]["params"]["n_estimators"] = 40
    raw["gates"]["floors"] = {"roc_auc": 0.55}
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))

    venv_bin = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLOPS_", "FEAST_", "MLFLOW_"))}
    env.update({"PATH": f"{venv_bin}:{env['PATH']}", "MLOPS_STATE_URI": str(repo / ".state"),
                "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                "GIT_COMMITTER_EMAIL": "t@t"})
    _run(["git", "init", "-q"], repo, env)
    _run(["git", "add", "-A"], repo, env)
    _run(["git", "commit", "-qm", "snapshot"], repo, env)
    commit = _run(["git", "rev-parse", "HEAD"], repo, env).strip()

    dvc = [str(Path(venv_bin) / "dvc")]
    _run([*dvc, "repro", "train"], repo, env)
    first = json.loads((repo / "metrics" / "train.json").read_text())
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    landing_md5 = next(o["md5"] for o in lock["stages"]["ingest"]["outs"] if "landing" in o["path"])

    # From the registered version's lineage back to data, features and code.
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{repo}/.state/mlflow/mlflow.db")
    version = client.get_model_version(raw["registry"]["model_name"], "1")
    assert version.tags["training_data_sha256"] == first["training_set_sha256"]
    assert version.tags["dvc_data_version"] == landing_md5
    assert version.tags["feature_service"] == raw["features"]["service"]
    assert version.tags["git_commit"].startswith(commit)
    run_metrics = client.get_run(version.run_id).data.metrics

    # dvc repro of that data reproduces the metrics.
    _run([*dvc, "repro", "-f", "-s", "train"], repo, env)
    second = json.loads((repo / "metrics" / "train.json").read_text())
    assert second == first
    for name in ("roc_auc", "pr_auc", "brier", "calibration_error"):
        assert run_metrics[name] == pytest.approx(first[name], abs=1e-12)
    # ... and the model, byte for byte (the re-run is another process, another hash seed)
    again = client.get_model_version(raw["registry"]["model_name"], "2")
    assert again.tags["onnx_sha256"] == version.tags["onnx_sha256"]

    # The data version also round-trips through the object-store remote (`s3` in .dvc/config)
    # on a real S3 server: push, drop the local cache, pull it back, in sync.
    from stack.services import create_bucket, start_seaweedfs

    s3 = start_seaweedfs(tmp_path / "s3")
    try:
        create_bucket(s3.env, "mlops-dvc")
        s3_env = {**env, **s3.env}
        _run([*dvc, "remote", "modify", "--local", "s3", "endpointurl", s3.env["AWS_ENDPOINT_URL"]],
             repo, s3_env)
        assert "files pushed" in _run([*dvc, "push", "-r", "s3"], repo, s3_env)
        shutil.rmtree(repo / ".dvc" / "cache")
        shutil.rmtree(repo / ".state" / "data" / "landing")
        _run([*dvc, "pull", "-r", "s3"], repo, s3_env)
        assert "in sync" in _run([*dvc, "status", "-c", "-r", "s3"], repo, s3_env)
        assert not _run([*dvc, "status", "ingest"], repo, s3_env).strip().startswith("ingest:")
        assert any((repo / ".state" / "data" / "landing").rglob("*.csv"))
    finally:
        s3.stop(timeout=3)
