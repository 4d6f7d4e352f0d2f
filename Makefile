# Two commands do all the set-up on a fresh machine:
#   make demo   install, prepare the data, and run the whole lifecycle through Airflow
#   make test   install and run the test suite
SHELL := /bin/bash
.PHONY: install demo test test-fast test-component up serve stack stack-down bench audit clean

install:
	bash scripts/install.sh

demo:
	bash scripts/demo.sh

# The suite on 2 processes, one test file per process at a time (module fixtures stay whole):
# most integration tests wait on real servers, so two share 2 cores well. TEST_WORKERS=0: one.
# Files are handed out in collection order, longest first (tests/conftest.py: LONGEST_FIRST);
# without --no-loadscope-reorder pytest-xdist re-sorts them by their number of tests.
TEST_WORKERS ?= 2
test: install
	.venv/bin/python -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=15

test-fast: install  ## the unit tier: pure functions on in-memory data (well under a minute)
	.venv/bin/python -m pytest -q -p no:cacheprovider tests/unit

test-component: install  ## unit + one real embedded component per test (MLflow, Feast, GX, DuckDB)
	.venv/bin/python -m pytest -q -p no:cacheprovider tests/unit tests/dags tests/component

up:  ## Airflow UI (:8080) and MLflow UI (:5000) on the state the demo left
	bash scripts/up.sh

serve: install  ## the online model server (V2 protocol) on 127.0.0.1:8090; token in .state/serving/token
	.venv/bin/python -m pipelines.serving

stack: install  ## the scale path from packages on loopback: Postgres, Redis, S3, MLflow, Airflow + 2 Celery workers
	.venv/bin/python -m stack up --workers $${WORKERS:-2}

stack-down:  ## stop everything `make stack` started
	.venv/bin/python -m stack down

bench: install
	.venv/bin/python -m bench

audit:  ## pip-audit --strict on the lock: fails if any package could not be audited
	bash scripts/audit.sh

clean:  ## remove all embedded state (data, models, Airflow metadata)
	rm -rf .state
