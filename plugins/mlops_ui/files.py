"""Which files the plugin serves, read-only, with which headers, and their URLs.

Two things are served, both where `pipelines.core.locations` puts them: the reports tree
(validation, gate and drift reports, Data Docs: `Settings.reports_uri`) and the manifest of a
published prediction partition (`locations.manifest`, one JSON file per day). Nothing else of
the data root: the landing zone and the quarantine hold suppliers' files, and a supplier's HTML
or SVG must never run in the Airflow origin with a logged-in user's session.

A URI (from XCom, the promotion history, a report) or a request path is accepted only in normal
form: an absolute local path or `file:///` URI under a served tree, without `.`, `..` or empty
parts, hidden parts (`.tmp-*` files of writes in progress), backslashes, NULs or percent
signs, whose target (symlinks followed) stays inside the tree and outside the landing zone and
the quarantine (whatever the roots are configured to). Anything else is refused, never repaired.

Every response carries `X-Content-Type-Options: nosniff` and a sandboxing
`Content-Security-Policy`: an HTML report runs its own scripts in an opaque origin (no cookies,
no network, no forms), every other file runs nothing, and a type not listed in INLINE is sent
as an attachment.
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from urllib.parse import quote

from mlops_ui import urls
from pipelines.core import locations, storage
from pipelines.core.settings import Settings

REPORTS, MANIFESTS = "reports", "manifests"  # the served trees, as named in URLs
INLINE = {  # shown in the browser; any other type is downloaded
    ".html": "text/html; charset=utf-8",
    ".json": "application/json",
    ".md": "text/plain; charset=utf-8",  # the reports are Markdown written to be read as text
    ".txt": "text/plain; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".ico": "image/x-icon",
    ".css": "text/css; charset=utf-8",
}
ATTACHMENT = "application/octet-stream"
# Evidently and GX Data Docs pages need their scripts; sandboxed without allow-same-origin they
# run in an opaque origin: no Airflow cookie, no fetch/XHR, no form posts.
HTML_POLICY = ("sandbox allow-scripts allow-popups allow-popups-to-escape-sandbox allow-downloads; "
               "connect-src 'none'; form-action 'none'; frame-ancestors 'self'")
# Everything else (an SVG above all) runs nothing.
STATIC_POLICY = ("sandbox; default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; "
                 "frame-ancestors 'self'")
_MANIFEST_NAME = re.compile(r"^(\d{4}-\d{2}-\d{2})\.json$")
_BAD_CHARS = re.compile(r"[\x00-\x1f\x7f\\%]")


class FileDenied(PermissionError):
    """The path is outside the served trees or not in normal form."""


@dataclass(frozen=True)
class Served:
    """A file the server may send, and how."""

    path: Path
    content_type: str
    headers: dict[str, str]
    attachment: bool


def _plain(uri: object) -> str | None:
    """`uri` as a local path in normal form, or None (another scheme, `file://host/`, `..`, ...)."""
    if not isinstance(uri, str) or not uri or _BAD_CHARS.search(uri):
        return None
    path = uri[len("file://"):] if uri.startswith("file://") else uri
    if "://" in path or path.startswith("//") or (uri.startswith("file://") and not path.startswith("/")):
        return None
    return path if posixpath.normpath(path) == path else None


def _tree_forms(tree_uri: str) -> list[str]:
    """The spellings of a local tree's root a URI may start with: as configured, and absolute."""
    if not storage.is_local(tree_uri):
        return []
    configured = _plain(tree_uri.rstrip("/"))
    return sorted({f for f in (configured, os.path.abspath(storage.local_path(tree_uri))) if f},
                  key=len, reverse=True)


def _relative(tree_uri: str, uri: object) -> str | None:
    """`uri` relative to the tree `tree_uri`, if it is a normal-form local path inside it."""
    path = _plain(uri)
    if path is None:
        return None
    for root in _tree_forms(tree_uri):
        if path.startswith(root.rstrip("/") + "/"):
            return path[len(root.rstrip("/")) + 1:]
    return None


def _inside(base: str, parts: list[str]) -> Path:
    """The resolved file `base`/parts, refused if it leaves `base` (symlinks followed)."""
    root = Path(base).resolve()
    target = root.joinpath(*parts).resolve()
    if not target.is_relative_to(root):
        raise FileDenied("outside the served folder")
    return target


def _parts(relpath: str) -> list[str]:
    """The parts of a request path in normal form, else FileDenied."""
    if not relpath or _BAD_CHARS.search(relpath):
        raise FileDenied("malformed path")
    parts = relpath.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise FileDenied("path traversal or a path not in normal form")
    if any(p.startswith(".") for p in parts):
        raise FileDenied("hidden file")
    return parts


def _supplier_zone(settings: Settings, target: Path) -> bool:
    """True if `target` lies in the landing zone or the quarantine (suppliers' files)."""
    for uri in (settings.landing_uri, settings.quarantine_uri):
        if storage.is_local(uri) and target.is_relative_to(Path(storage.local_path(uri)).resolve()):
            return True
    return False


def _report(settings: Settings, relpath: str) -> Path:
    if not storage.is_local(settings.reports_uri):
        raise FileDenied("the reports are not on a local filesystem")
    return _inside(storage.local_path(settings.reports_uri), _parts(relpath))


def _day(name: str) -> date | None:
    try:
        return date.fromisoformat(name)
    except ValueError:
        return None


def _manifest(settings: Settings, relpath: str) -> Path:
    match = _MANIFEST_NAME.match(relpath)
    day = _day(match.group(1)) if match else None
    if day is None:
        raise FileDenied("a manifest is named by its day: YYYY-MM-DD.json")
    manifest = locations.manifest(settings, day)
    if not storage.is_local(manifest):
        raise FileDenied("the predictions are not on a local filesystem")
    target = Path(storage.local_path(manifest)).resolve()
    if target.parent != Path(storage.local_path(locations.predictions(settings, day))).resolve():
        raise FileDenied("outside the partition")  # a symlinked manifest
    return target


def resolve(settings: Settings, root: str, relpath: str) -> Served:
    """The file a request for `root`/`relpath` may read, with its content type and headers.

    Raises FileDenied for anything outside the served trees or not in normal form,
    FileNotFoundError if an allowed path does not exist.
    """
    if root == REPORTS:
        target = _report(settings, relpath)
    elif root == MANIFESTS:
        target = _manifest(settings, relpath)
    else:
        raise FileDenied(f"unknown root {root!r}")
    if _supplier_zone(settings, target):
        raise FileDenied("a supplier's file (landing zone or quarantine)")
    if not target.is_file():
        raise FileNotFoundError(relpath)
    content_type = INLINE.get(target.suffix.lower())
    policy = HTML_POLICY if content_type and content_type.startswith("text/html") else STATIC_POLICY
    headers = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache",
               "Content-Security-Policy": policy}
    return Served(target, content_type or ATTACHMENT, headers, attachment=content_type is None)


def same(a: object, b: object) -> bool:
    """True if two URIs name the same local file, both in normal form (`file://` or not)."""
    pa, pb = _plain(a), _plain(b)
    return pa is not None and pa == pb


def manifest_day(settings: Settings, uri: object) -> date | None:
    """The day whose partition manifest `uri` is (exactly `locations.manifest`), else None."""
    path = _plain(uri)
    if path is None:
        return None
    folder = posixpath.basename(posixpath.dirname(path))
    day = _day(folder[-10:])
    return day if day is not None and same(uri, locations.manifest(settings, day)) else None


def href(settings: Settings, uri: str | None) -> str | None:
    """The URL that serves `uri`, or None unless it is a normal-form URI of a served file.

    A link is only made for what `resolve` would serve: under the reports tree (symlinks
    followed) and not a supplier's file, or a partition manifest.
    """
    rel = _relative(settings.reports_uri, uri)
    if rel is not None:
        try:
            target = _report(settings, rel)
        except FileDenied:
            return None
        if _supplier_zone(settings, target):
            return None
        return f"{urls.root()}/files/{REPORTS}/{quote(rel, safe='/=:@')}"
    day = manifest_day(settings, uri)
    if day is not None:
        return f"{urls.root()}/files/{MANIFESTS}/{day.isoformat()}.json"
    return None
