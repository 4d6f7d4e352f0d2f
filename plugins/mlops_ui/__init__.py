"""The project's Airflow UI additions: operator extra links, a model page and a report server.

Airflow loads `plugins/mlops_ui_plugin.py`, which imports `mlops_ui.plugin`. The modules here:

    data.py     champion / challenger, promotion history and partition lineage, as plain dicts
    trends.py   drift and live-quality points of the last N days (source: the verdict files)
    files.py    which files may be served (reports, partition manifests), how, and their URLs
    links.py    operator extra links computed from a task's XCom value and its upstream tasks'
    task_outputs.py  those values and the task's upstream tasks, read in the API server
    charts.py   inline SVG line charts
    page.py     the HTML of the model page and of the validation index
    app.py      the FastAPI app mounted in the API server under /mlops (Airflow's authentication)
    plugin.py   the AirflowPlugin

Nothing here imports pandas, mlflow or the FastAPI app at import time: every Airflow process
loads plugins, most of them never serve a page.
"""
