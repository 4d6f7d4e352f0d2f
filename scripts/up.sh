#!/usr/bin/env bash
# Start the Airflow UI (airflow standalone) and the MLflow UI on the embedded state, on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
[ -f "$AIRFLOW_HOME/airflow.db" ] || { echo "no state yet: run 'make demo' first" >&2; exit 1; }
mkdir -p "$MLOPS_STATE_URI/logs"
airflow_login  # a state made before the login was generated here: keep its file private
# MLflow's job runner (GenAI jobs: prompt optimisation, scorers; unused here) would start eight
# more Python processes, ~2.2 GB and ~25 s of CPU: off unless asked for.
MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}" \
  mlflow server --backend-store-uri "sqlite:///$MLOPS_STATE_URI/mlflow/mlflow.db" \
  --default-artifact-root "$MLOPS_STATE_URI/mlflow/artifacts" --host 127.0.0.1 --port "$MLFLOW_PORT" \
  >"$MLOPS_STATE_URI/logs/mlflow.log" 2>&1 &
MLFLOW_PID=$!
trap 'kill $MLFLOW_PID 2>/dev/null || true' EXIT
echo "MLflow UI:  http://127.0.0.1:$MLFLOW_PORT"
echo "Airflow UI: http://127.0.0.1:$AIRFLOW__API__PORT  (user admin; password in $AIRFLOW_HOME/simple_auth_manager_passwords.json.generated)"
exec airflow standalone
