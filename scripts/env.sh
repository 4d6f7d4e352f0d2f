# Environment of the embedded default: every piece of state under one git-ignored folder.
# Source it (`. scripts/env.sh`); values already set in the environment win.
# Everything a script writes (state, logs, the generated admin password) is for its owner only.
umask 077
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export MLOPS_STATE_URI="${MLOPS_STATE_URI:-$REPO/.state}"
export AIRFLOW_HOME="${AIRFLOW_HOME:-$MLOPS_STATE_URI/airflow}"
export AIRFLOW__CORE__DAGS_FOLDER="$REPO/dags"
export AIRFLOW__CORE__PLUGINS_FOLDER="$REPO/plugins"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION=True
export AIRFLOW__CORE__PARALLELISM="${AIRFLOW__CORE__PARALLELISM:-2}"
# LocalExecutor whose workers import the heavy libraries once; task processes fork from them
export AIRFLOW__CORE__EXECUTOR="${AIRFLOW__CORE__EXECUTOR:-pipelines.core.executor.PreloadingLocalExecutor}"
export AIRFLOW__API__PORT="${AIRFLOW__API__PORT:-8080}"
export AIRFLOW__API__HOST="${AIRFLOW__API__HOST:-127.0.0.1}"
# Task processes report to the API server's execution API: on whatever port it listens.
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="${AIRFLOW__CORE__EXECUTION_API_SERVER_URL:-http://127.0.0.1:$AIRFLOW__API__PORT/execution/}"
export AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL="${AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL:-30}"
# A task slot frees only once the task's supervisor sees the task process exit, which it may
# notice only when its wait times out: after [workers] min_heartbeat_interval (Airflow's 5 s).
# `bench nightly`, 7 nights, alternating runs: 123-129 s with 5 s, 82-85 s with 1 s.
export AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL="${AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL:-1}"
export MLFLOW_PORT="${MLFLOW_PORT:-5000}"
# Models are loaded as ONNX only: no MLflow client here unpickles anything.
export MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false
# Two cores: one math thread per task, or training and scoring stall each other.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-1}"
export PATH="$REPO/.venv/bin:$PATH"
# A demo run pins the scheduled span so `make up` shows the same runs (see scripts/demo.sh).
if [ -f "$MLOPS_STATE_URI/schedule.env" ]; then . "$MLOPS_STATE_URI/schedule.env"; fi

# The `admin` login of `airflow standalone` (SimpleAuthManager): generated here once, in a 0600
# file, so that Airflow finds it and never generates one itself and prints it into a log.
airflow_login() {
  local file="$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated"
  mkdir -p "$AIRFLOW_HOME"
  if [ ! -s "$file" ]; then
    python -c 'import json, secrets, sys; json.dump({"admin": secrets.token_urlsafe(18)}, open(sys.argv[1], "w"))' "$file"
  fi
  chmod 600 "$file"
}
