#!/usr/bin/env bash
# Prepare the embedded state: data in the landing zone (DVC), Feast registry, Airflow metadata.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
mkdir -p "$MLOPS_STATE_URI" "$AIRFLOW_HOME"
# Owner only, also what an older version wrote (`make stack` keeps .state/stack so itself). The
# top folder stays traversable (0711: nothing in it can be listed, every folder below is 0700)
# so that the stack's Postgres, which runs as its own OS user when root starts it, can reach its
# data folder under .state/stack.
find "$MLOPS_STATE_URI" -path "$MLOPS_STATE_URI/stack" -prune -o -exec chmod go-rwx {} +
chmod 711 "$MLOPS_STATE_URI"
airflow_login

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
