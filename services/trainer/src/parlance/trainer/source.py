"""Where the training JSONL comes from: a file, or the gateway's admin export
(GET /v1/admin/export?kind=preference or kind=sft, the admin key as the bearer)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx

from parlance.trainer.errors import TrainError

EXPORT_PATH = "/v1/admin/export"


@dataclass(frozen=True, slots=True)
class Loaded:
    data: bytes
    # What the model card names as the data's source (never the key).
    source: str
    # The export's time window, when the data came from the gateway (None: not known).
    since: str | None = None
    until: str | None = None
    model: str | None = None


def read_file(path: Path) -> Loaded:
    try:
        return Loaded(path.read_bytes(), str(path))
    except OSError as exc:
        raise TrainError(f"cannot read {path}: {exc.strerror or exc}") from None


def export_url(gateway: str) -> str:
    """The export route of a gateway given by its base URL (or by the route itself)."""
    parts = urlsplit(gateway)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise TrainError(f"--from-gateway needs an http(s) URL, not {gateway!r}")
    path = parts.path.rstrip("/")
    if not path.endswith(EXPORT_PATH):
        path += EXPORT_PATH
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def _error_message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200]


def fetch_export(
    gateway: str,
    key_env: str,
    *,
    since: str | None = None,
    until: str | None = None,
    model: str | None = None,
    kind: str = "preference",
    timeout_s: float = 300.0,
) -> Loaded:
    """The records of the gateway's admin export (preference pairs, or SFT conversations for
    kind="sft"), all of it in memory."""
    key = os.environ.get(key_env, "")
    if not key:
        raise TrainError(f"the admin key is not set: export it as ${key_env} (--admin-key-env)")
    url = export_url(gateway)
    params = {"kind": kind}
    params.update({k: v for k, v in (("since", since), ("until", until), ("model", model)) if v})
    try:
        response = httpx.get(
            url,
            params=params,
            headers={"Authorization": f"Bearer {key}"},
            timeout=httpx.Timeout(timeout_s, connect=10.0),
        )
    except httpx.HTTPError as exc:
        raise TrainError(f"cannot fetch the export from {url}: {exc}") from None
    if response.status_code != 200:
        raise TrainError(
            f"the gateway refused the export ({response.status_code}): {_error_message(response)}"
        )
    return Loaded(response.content, url, since=since, until=until, model=model)
