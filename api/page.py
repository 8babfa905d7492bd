"""The live leaderboard page: ``/`` and its few static files, read once from ``api/static/``.

The page refers to each asset with its content hash (``/static/app.js?v=1a2b3c4d``), so an
asset asked for by its current hash may be cached for a year (``immutable``) while ``/``
itself is revalidated each time (``no-cache`` with an ``ETag``; ``If-None-Match`` gets 304).
No build step: what is in the folder is what is served.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from api.errors import NotFound

_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".svg": b"image/svg+xml",
    ".png": b"image/png",
}
_ASSETS = ("app.css", "app.js", "favicon.svg")
_YEAR = b"public, max-age=31536000, immutable"
_REVALIDATE = b"no-cache"
_SECURITY = [
    (b"x-content-type-options", b"nosniff"),
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        b"connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    ),
    (b"referrer-policy", b"no-referrer"),
]


@dataclass(frozen=True, slots=True)
class Asset:
    """One file as served: its bytes, type and validator."""

    body: bytes
    content_type: bytes
    etag: bytes
    version: str


@dataclass(frozen=True, slots=True)
class Response:
    """Status, headers and body of a page request (the body is empty for 304)."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


class Page:
    """The page and its assets, loaded from the package at start-up."""

    def __init__(self) -> None:
        # Beside this module (not via importlib.resources("api"): the tests' own "api"
        # package can shadow that name).
        folder = Path(__file__).resolve().parent / "static"
        self._assets = {name: _asset(name, (folder / name).read_bytes()) for name in _ASSETS}
        html = (folder / "index.html").read_bytes()
        for name, asset in self._assets.items():
            html = html.replace(
                b'"/static/%s"' % name.encode(),
                b'"/static/%s?v=%s"' % (name.encode(), asset.version.encode()),
            )
        self._index = _asset("index.html", html)

    def index(self, if_none_match: bytes | None) -> Response:
        """``GET /``: always revalidated."""
        return _respond(self._index, _REVALIDATE, if_none_match)

    def asset(self, name: bytes, query_string: bytes, if_none_match: bytes | None) -> Response:
        """``GET /static/{name}``: cached for a year when asked for by its current hash."""
        asset = self._assets.get(name.decode("latin-1"))
        if asset is None:
            raise NotFound(f"no static file {name[:60].decode('latin-1')!r}")
        current = query_string == b"v=" + asset.version.encode()
        return _respond(asset, _YEAR if current else _REVALIDATE, if_none_match)


def _asset(name: str, body: bytes) -> Asset:
    digest = hashlib.sha256(body).hexdigest()[:16]
    content_type = _TYPES[name[name.rindex(".") :]]
    return Asset(body, content_type, b'"%s"' % digest.encode(), digest)


def _respond(asset: Asset, cache: bytes, if_none_match: bytes | None) -> Response:
    headers = [(b"cache-control", cache), (b"etag", asset.etag), *_SECURITY]
    if if_none_match is not None and _matches(if_none_match, asset.etag):
        return Response(304, headers, b"")
    headers.insert(0, (b"content-type", asset.content_type))
    return Response(200, headers, asset.body)


def _matches(if_none_match: bytes, etag: bytes) -> bool:
    tags = [tag.strip().removeprefix(b"W/") for tag in if_none_match.split(b",")]
    return b"*" in tags or etag in tags
