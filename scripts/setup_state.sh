#!/usr/bin/env bash
# Prepare the embedded state: data in the landing zone (DVC), Feast registry, Airflow metadata.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
mkdir -p "$MLOPS_STATE_URI" "$AIRFLOW_HOME"

# Data: the ingest stage cuts the package's tables into daily raw batches; DVC tracks them and
# pushes them to the local remote (.state/dvc-remote).
if [ ! -d .dvc ]; then dvc init --quiet; fi
dvc repro ingest
dvc push --quiet || dvc push

# Feast: register the definitions in feature_repo/.
python -m pipelines.cli apply >/dev/null

# Airflow: metadata DB, the pool that serialises alias moves, DAGs parsed into the DB.
airflow db migrate >/dev/null
airflow pools set model_registry 1 "Serialises MLflow alias moves (one at a time)" >/dev/null
airflow dags reserialize >/dev/null 2>&1
echo "setup: state ready under $MLOPS_STATE_URI"
