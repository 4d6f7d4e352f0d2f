# The project image: Airflow 3, MLflow, Feast and the pipelines from the pinned lock.
# One image for every Python service of docker-compose.yaml (Airflow components, MLflow server,
# the one-shot init). No credentials are baked in: everything secret arrives as environment
# variables at run time (see .env.example). Runs as an unprivileged user.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    OMP_NUM_THREADS=1 \
    OPENBLAS_NUM_THREADS=1

# libgomp1: scikit-learn / onnxruntime OpenMP runtime. No compilers: the lock is all wheels.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 tini \
 && rm -rf /var/lib/apt/lists/*

# Fixed uid/gid so named volumes get a predictable owner; no login shell, no sudo.
RUN groupadd --system --gid 50000 mlops \
 && useradd --system --uid 50000 --gid mlops --home-dir /opt/mlops --shell /usr/sbin/nologin mlops

WORKDIR /opt/mlops

# Dependencies first (cached layer), then the project. The lock has a sha256 for every file
# (uv pip compile --generate-hashes): --require-hashes refuses any other bytes, and --no-deps
# installs exactly the lock, which is complete.
COPY requirements.txt ./
RUN pip install --no-cache-dir --no-deps --require-hashes -r requirements.txt \
 && python -m compileall -q -j 0 "$(python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"
# ^ bytecode compiled once here: PYTHONDONTWRITEBYTECODE (above) stops every Airflow task
#   process from caching it, so without it each task recompiles its imports

COPY --chown=mlops:mlops pyproject.toml params.yaml dvc.yaml dvc.lock ./
COPY --chown=mlops:mlops pipelines ./pipelines
COPY --chown=mlops:mlops dags ./dags
COPY --chown=mlops:mlops plugins ./plugins
COPY --chown=mlops:mlops feature_repo ./feature_repo
COPY --chown=mlops:mlops expectations ./expectations
# Editable, as in scripts/install.sh: pipelines.core.settings.REPO_ROOT must be /opt/mlops, where
# params.yaml, feature_repo/, expectations/ and dvc.lock live.
# Built by the lock's setuptools (--no-build-isolation): nothing unhashed is downloaded.
RUN pip install --no-cache-dir --no-deps --no-build-isolation -e . \
 && mkdir -p /opt/airflow && chown mlops:mlops /opt/airflow

ENV AIRFLOW_HOME=/opt/airflow \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/mlops/dags \
    AIRFLOW__CORE__PLUGINS_FOLDER=/opt/mlops/plugins \
    AIRFLOW__CORE__LOAD_EXAMPLES=False \
    MLOPS_PARAMS=/opt/mlops/params.yaml \
    MLOPS_FEATURE_REPO=/opt/mlops/feature_repo \
    MLOPS_EXPECTATIONS_DIR=/opt/mlops/expectations

USER mlops
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["airflow", "version"]
