#!/usr/bin/env bash
# The whole lifecycle on the embedded defaults, driven by a real Airflow scheduler:
#   initial training -> nightly materialisation, scoring and drift checks (catch-up runs of
#   the scheduled DAGs, DEMO_START..DEMO_END) -> drift-triggered retraining through the same
#   gates, beside the later nights.
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO_START="${DEMO_START:-2013-06-01}"
DEMO_END="${DEMO_END:-2013-06-14}"
DEMO_TIMEOUT="${DEMO_TIMEOUT:-3600}"

bash scripts/install.sh
. scripts/env.sh
# The scheduled span, pinned before the set-up parses the DAGs (scripts/env.sh reads it back,
# so `make up` shows the same runs).
mkdir -p "$MLOPS_STATE_URI/logs"
cat > "$MLOPS_STATE_URI/schedule.env" <<ENV
export MLOPS_SCHEDULE_START=$DEMO_START
export MLOPS_SCHEDULE_END=$DEMO_END
export MLOPS_SENSOR_POKE_SECONDS=15
ENV
. "$MLOPS_STATE_URI/schedule.env"
bash scripts/setup_state.sh

AIRFLOW_PID=""
stop_airflow() {  # the whole process group: scheduler, API server, workers, triggerer
  if [ -n "$AIRFLOW_PID" ]; then
    kill -TERM -- "-$AIRFLOW_PID" 2>/dev/null || true
    for _ in $(seq 30); do kill -0 -- "-$AIRFLOW_PID" 2>/dev/null || break; sleep 1; done
    kill -KILL -- "-$AIRFLOW_PID" 2>/dev/null || true
    wait "$AIRFLOW_PID" 2>/dev/null || true
    AIRFLOW_PID=""
  fi
}
port_free() {
  ! python -c "import socket,sys; s=socket.socket(); sys.exit(0 if s.connect_ex(('127.0.0.1', $1)) == 0 else 1)"
}
trap stop_airflow EXIT

port_free "$AIRFLOW__API__PORT" || { echo "port $AIRFLOW__API__PORT is in use (another Airflow?): stop it or set AIRFLOW__API__PORT" >&2; exit 1; }
setsid airflow standalone >>"$MLOPS_STATE_URI/logs/standalone.log" 2>&1 &
AIRFLOW_PID=$!
python -m pipelines.demo drive --start "$DEMO_START" --end "$DEMO_END" --timeout "$DEMO_TIMEOUT" --initial-training
stop_airflow
python -m pipelines.demo summary --start "$DEMO_START" --end "$DEMO_END"
