"""What people read after a validation: GX Data Docs (HTML) and the expectations report (Markdown).

Each GX run is a ValidationDefinition in an ephemeral context whose one docs site is a
temporary local folder, where GX builds what a Checkpoint's `UpdateDataDocsAction` would; that
site is then copied through `pipelines.core.storage` to `docs_uri` (a local folder or an
object-store prefix), one site per batch:

    <docs_uri>/index.html                                    the batch's latest run and its suite
    <docs_uri>/expectations/<suite>.html                     the suite as it was run
    <docs_uri>/validations/<suite>/<partition>/<time>/<asset>.html   one page per run (kept)

The expectations report is a short Markdown file beside the JSON report: the verdict, what failed,
what only warned and what passed, including the file and timestamp checks GX does not run.
Great Expectations is imported only when a context or a page view is made (the page views are
created on first use, through the module's `__getattr__`): a validation that finds a passing
report for the same bytes never imports it.
"""

from __future__ import annotations

import os
from functools import cache
from typing import TYPE_CHECKING, Any

import jinja2

from pipelines.core import storage

if TYPE_CHECKING:
    from great_expectations.data_context import AbstractDataContext

# The pages link only the favicon from GX's static folder (styles and scripts come from CDNs);
# the rest of it is 4 MB of tutorial images and fonts that would be copied for every batch.
_STATIC_KEPT = ("static/images/favicon.ico",)
_SITE = "local_site"


class _MemoryBytecodeCache(jinja2.BytecodeCache):
    """Compiled Jinja templates kept for the life of the process.

    GX makes a new Jinja environment for every page it renders and compiles its templates again
    each time (about 0.1 s per batch); the views below share this cache through GX's documented
    `view` configuration, so only the compiled code is reused, never a rendered page.
    """

    def __init__(self) -> None:
        self.code: dict[str, bytes] = {}

    def load_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        if bucket.key in self.code:
            bucket.bytecode_from_string(self.code[bucket.key])

    def dump_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        self.code[bucket.key] = bucket.bytecode_to_string()


_TEMPLATES = _MemoryBytecodeCache()


@cache
def _views() -> dict[str, type]:
    """GX's page views with the shared template cache (GX loads them by module and class name)."""
    from great_expectations.render.view import (
        DefaultJinjaIndexPageView,
        DefaultJinjaPageView,
    )

    class CachedPageView(DefaultJinjaPageView):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.env.bytecode_cache = _TEMPLATES

    class CachedIndexPageView(DefaultJinjaIndexPageView):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.env.bytecode_cache = _TEMPLATES

    return {"CachedPageView": CachedPageView, "CachedIndexPageView": CachedIndexPageView}


def __getattr__(name: str) -> Any:
    if name in ("CachedPageView", "CachedIndexPageView"):
        return _views()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def context(site_dir: str | None) -> AbstractDataContext:
    """An ephemeral GX context (in-memory stores); with a Data Docs site in `site_dir` if given."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    sites = {}
    if site_dir:
        page = {"module_name": __name__, "class_name": "CachedPageView"}
        sites[_SITE] = {
            "class_name": "SiteBuilder", "show_how_to_buttons": False,
            "store_backend": {"class_name": "TupleFilesystemStoreBackend",
                              "base_directory": site_dir},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder", "view": {
                "module_name": __name__, "class_name": "CachedIndexPageView"}},
            "site_section_builders": {"expectations": {"view": page}, "validations": {"view": page},
                                      "profiling": "None"}}
    config = DataContextConfig(store_backend_defaults=InMemoryStoreBackendDefaults(),
                               data_docs_sites=sites, analytics_enabled=False,
                               progress_bars=ProgressBarsConfig(globally=False))
    return gx.get_context(project_config=config, mode="ephemeral")


def publish(site_dir: str, docs_uri: str) -> str:
    """Copy the site GX built in `site_dir` to `docs_uri` (index last); returns the run's page."""
    files = [os.path.relpath(os.path.join(root, n), site_dir).replace(os.sep, "/")
             for root, _, names in os.walk(site_dir) for n in names]
    page = None
    for rel in sorted(files, key=lambda r: (r == "index.html", r)):
        target = storage.join(docs_uri, rel)
        if rel.startswith("static/") and (rel not in _STATIC_KEPT or storage.exists(target)):
            continue
        with open(os.path.join(site_dir, rel), "rb") as fh:
            storage.write_bytes(target, fh.read())
        page = target if rel.startswith("validations/") else page
    if page is None:
        raise RuntimeError(f"GX built no validation page in {site_dir}")
    return page


def _cell(value: Any, limit: int = 160) -> str:
    text = " ".join(str(value).split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def expectations_report(report: dict) -> str:
    """The Markdown summary of one validation report: verdict, failures, warnings, passes."""
    checks = report.get("checks", [])
    failed = [c for c in checks if not c["success"] and c["on_failure"] == "fail"]
    warned = [c for c in checks if not c["success"] and c["on_failure"] == "warn"]
    passed = [c for c in checks if c["success"]]
    verdict = "FAILED" if failed else ("PASSED with warnings" if warned else "PASSED")
    lines = [f"# {report['table']}: {verdict}", "",
             (f"- data: `{report['batch_uri']}` ({report.get('rows')} rows, "
              f"sha256 `{(report.get('sha256') or '-')[:12]}`)"),
             f"- suite: `{report.get('suite')}` (sha256 `{report['suite_sha256'][:12]}`)",
             f"- checks: {len(failed)} failed, {len(warned)} warned, {len(passed)} passed",
             f"- validated at: {report.get('validated_at')}"]
    if any(report.get("interval") or []):
        lines.append(f"- interval: [{report['interval'][0]}, {report['interval'][1]})")
    for key, label in (("data_docs_uri", "Data Docs page"), ("quarantined_to", "quarantined to")):
        if report.get(key):
            lines.append(f"- {label}: `{report[key]}`")
    if not report.get("data_docs_uri"):
        lines.append("- Data Docs: none (the file could not be read as a table, so GX did not run)")
    for title, group in (("Failed (the pipeline stops)", failed),
                         ("Warned (reported, the pipeline goes on)", warned)):
        if group:
            lines += ["", f"## {title}", "", "| column | check | observed | examples |",
                      "|---|---|---|---|"]
            lines += [f"| {_cell(c['column'])} | {c['check']} | "
                      f"{_cell(c['error'] or c['observed'])} | "
                      f"{_cell(', '.join(c.get('examples') or []))} |" for c in group]
    if passed:
        lines += ["", "## Passed", "", "| column | check | observed |", "|---|---|---|"]
        lines += [f"| {_cell(c['column'])} | {c['check']} | {_cell(c['observed'], 60)} |"
                  for c in passed]
    return "\n".join(lines) + "\n"
