"""Which local report and data files the plugin serves, read-only, and their URLs.

Two roots: `reports` (validation, gate and drift reports, Data Docs) and `data` (promotion
history, drift verdicts, partition manifests), as configured in `pipelines.core.settings`. A request
names a root and a relative path; it is served only if the resolved file (symlinks followed)
lies inside that root, no path part is hidden (`.tmp-*` files of writes in progress), and its
suffix is a report format. Raw data (CSV, Parquet) is never served.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote

from mlops_ui import urls
from pipelines.core import storage
from pipelines.core.settings import Settings

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".json": "application/json",
    ".md": "text/plain; charset=utf-8",  # the reports are Markdown written to be read as text
    ".txt": "text/plain; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".ico": "image/x-icon",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
}


class FileDenied(PermissionError):
    """The path is outside the served roots or not a servable kind of file."""


def roots(settings: Settings) -> dict[str, str]:
    """Served roots that are on the local filesystem: name -> absolute resolved path."""
    out = {}
    for name, uri in (("reports", settings.reports_uri), ("data", settings.data_uri)):
        if storage.is_local(uri):
            out[name] = str(Path(storage.local_path(uri)).resolve())
    return out


def resolve(settings: Settings, root: str, relpath: str) -> tuple[Path, str]:
    """The file a request for `root`/`relpath` may read, and its content type.

    Raises FileDenied for anything outside the root or not servable, FileNotFoundError if
    an allowed path does not exist.
    """
    bases = roots(settings)
    if root not in bases:
        raise FileDenied(f"unknown root {root!r}")
    if "\x00" in relpath or "\\" in relpath or relpath.startswith("/"):
        raise FileDenied("malformed path")
    parts = [p for p in relpath.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." or p.startswith(".") for p in parts):
        raise FileDenied("path traversal or hidden file")
    base = Path(bases[root])
    target = base.joinpath(*parts).resolve()  # follows symlinks: they must stay inside too
    if not target.is_relative_to(base):
        raise FileDenied("outside the served folder")
    suffix = target.suffix.lower()
    if suffix not in CONTENT_TYPES:
        raise FileDenied(f"{suffix or 'no suffix'}: not a report format")
    if not target.is_file():
        raise FileNotFoundError(relpath)
    return target, CONTENT_TYPES[suffix]


def href(settings: Settings, uri: str | None) -> str | None:
    """The URL that serves `uri` (a path or file:// URI under a served root), else None."""
    if not uri or ("://" in uri and not uri.startswith("file://")):
        return None
    path = os.path.abspath(uri.removeprefix("file://"))
    best: tuple[int, str, str] | None = None
    for name, base in roots(settings).items():
        for candidate in {base, os.path.abspath(storage.local_path(_uri_of(settings, name)))}:
            inside = path == candidate or path.startswith(candidate.rstrip("/") + "/")
            if inside and (best is None or len(candidate) > best[0]):  # the innermost root wins
                best = (len(candidate), name, os.path.relpath(path, candidate))
    if best is None:
        return None
    _, name, rel = best
    return f"{urls.root()}/files/{name}/{quote(rel, safe='/=:@')}"


def _uri_of(settings: Settings, root: str) -> str:
    return settings.reports_uri if root == "reports" else settings.data_uri
