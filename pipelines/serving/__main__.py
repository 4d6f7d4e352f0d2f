"""`python -m pipelines.serving`: start the online model server (what `make serve` runs).

Reads where to listen from the environment (`core.settings`: MLOPS_SERVING_HOST, default
127.0.0.1; MLOPS_SERVING_PORT, 8090; MLOPS_SERVING_WORKERS, 1), checks params.yaml, creates the
bearer token file on first start (0600; its path is printed, never the token), points
PROMETHEUS_MULTIPROC_DIR at a folder emptied of earlier runs' metric files (so `/metrics`
sums this run's workers), and runs uvicorn with `pipelines.serving.app:create_app` in each
worker (several workers: one listening socket each, `pipelines.serving.workers`).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from pipelines.core.config import load_config
from pipelines.core.settings import get_settings
from pipelines.serving.auth import ensure_token

log = logging.getLogger("pipelines.serving")


def prepare_metrics_dir(path: str) -> str:
    """Create the multiprocess metrics folder and remove earlier runs' metric files from it
    (prometheus_client's files only: `*.db`)."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):
        stale.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    # the deprecated name too: Feast's metrics module makes a temporary folder of its own in
    # every worker unless it is set
    os.environ["PROMETHEUS_MULTIPROCESS_DIR"] = str(folder)
    return str(folder)


def main(argv: list[str] | None = None) -> int:
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE

    if argv:
        print("usage: python -m pipelines.serving  (settings come from the environment: see "
              "pipelines/core/settings.py)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    cfg = load_config(settings.params_path)  # a bad params.yaml fails here, before any worker
    token_file = ensure_token(settings.token_path)
    prepare_metrics_dir(settings.metrics_dir)
    log.info("serving %s (aliases %s) on http://%s:%d with %d worker(s); bearer token in %s",
             cfg.registry.model_name, ", ".join(cfg.serving.aliases), settings.serving_host,
             settings.serving_port, settings.serving_workers, token_file)
    config = uvicorn.Config("pipelines.serving.app:create_app", factory=True,
                            host=settings.serving_host, port=settings.serving_port,
                            workers=settings.serving_workers, access_log=False,
                            log_level="info", timeout_graceful_shutdown=30,
                            timeout_worker_healthcheck=60)
    if config.workers > 1:  # one listening socket per worker (pipelines/serving/workers.py)
        from pipelines.serving import workers

        try:
            workers.run(config)
        except KeyboardInterrupt:
            pass
        return 0
    server = uvicorn.Server(config)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    return 0 if server.started else STARTUP_FAILURE


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
