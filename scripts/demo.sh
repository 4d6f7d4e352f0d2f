#!/usr/bin/env bash
# The whole lifecycle on the embedded defaults, driven by a real Airflow scheduler:
#   initial training -> nightly materialisation, scoring and drift checks over DEMO_START..DEMO_END
#   (catch-up runs of the scheduled DAGs) -> drift-triggered retraining through the same gates.
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO_START="${DEMO_START:-2013-06-01}"
DEMO_END="${DEMO_END:-2013-06-14}"
DEMO_TIMEOUT="${DEMO_TIMEOUT:-3600}"

bash scripts/install.sh
. scripts/env.sh
bash scripts/setup_state.sh

# Pin the scheduled span for this state (make up reads it back), and poke sensors often.
cat > "$MLOPS_STATE_URI/schedule.env" <<ENV
export MLOPS_SCHEDULE_START=$DEMO_START
export MLOPS_SCHEDULE_END=$DEMO_END
export MLOPS_SENSOR_POKE_SECONDS=15
ENV
. "$MLOPS_STATE_URI/schedule.env"
airflow dags reserialize >/dev/null 2>&1

mkdir -p "$MLOPS_STATE_URI/logs"
airflow standalone >"$MLOPS_STATE_URI/logs/standalone.log" 2>&1 &
AIRFLOW_PID=$!
trap 'kill $AIRFLOW_PID 2>/dev/null; wait $AIRFLOW_PID 2>/dev/null || true' EXIT
python -m pipelines.demo --start "$DEMO_START" --end "$DEMO_END" --timeout "$DEMO_TIMEOUT"
