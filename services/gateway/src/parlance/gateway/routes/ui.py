"""The chat web page: `/` serves index.html, `/static/...` its CSS and ES modules. Plain files
from the package (no bundler, no CDN), so the page works wherever the gateway runs."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from parlance.gateway import errors

router = APIRouter(include_in_schema=False)

STATIC_DIR = (Path(__file__).resolve().parent.parent / "static").resolve()

# The page only ever loads its own files and talks to its own origin: an answer that somehow
# carried markup could neither run script nor load anything from elsewhere.
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
_HEADERS = {
    "content-security-policy": _CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    # Revalidated each load (ETag/Last-Modified make that cheap): no stale page after an upgrade.
    "cache-control": "no-cache",
}
_MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}


def _file(path: Path) -> FileResponse:
    return FileResponse(path, media_type=_MEDIA_TYPES.get(path.suffix), headers=_HEADERS)


@router.get("/")
async def index() -> FileResponse:
    return _file(STATIC_DIR / "index.html")


@router.get("/static/{path:path}")
async def static_file(path: str) -> FileResponse:
    target = (STATIC_DIR / path).resolve()
    # resolve() folds "..": anything that lands outside the static folder does not exist.
    if (
        not target.is_relative_to(STATIC_DIR)
        or not target.is_file()
        or target.suffix not in _MEDIA_TYPES
    ):
        raise errors.not_found(f"No such file: /static/{path}")
    return _file(target)
