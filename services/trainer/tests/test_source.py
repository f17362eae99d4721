"""--from-gateway: the admin export over HTTP. The gateway is played by a stand-in HTTP server
(a test double: a real gateway needs history and the model; the route itself is tested in the
gateway's and history's suites). It checks the path, the query and the bearer."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar
from urllib.parse import parse_qs, urlsplit

import pytest

from parlance.trainer import source
from parlance.trainer.cli import main
from parlance.trainer.errors import TrainError

KEY = "sk-admin-test"
BODY = b'{"prompt": "q", "chosen": "a", "rejected": "b"}\n'


class _StandInGateway(BaseHTTPRequestHandler):
    seen: ClassVar[list[tuple[str, dict[str, list[str]], str]]] = []

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        self.seen.append((url.path, parse_qs(url.query), self.headers.get("Authorization", "")))
        if self.headers.get("Authorization") != f"Bearer {KEY}":
            body = json.dumps({"error": {"message": "Invalid admin key.", "type": "x"}}).encode()
            self.send_response(401)
        else:
            body = BODY
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def gateway() -> Iterator[str]:
    _StandInGateway.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StandInGateway)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_export_is_pulled_with_the_admin_key(gateway: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_ADMIN_KEY", KEY)
    loaded = source.fetch_export(gateway + "/", "MY_ADMIN_KEY", since="2026-01-01", model="m")
    assert loaded.data == BODY
    assert loaded.source == gateway + "/v1/admin/export"
    assert (loaded.since, loaded.until, loaded.model) == ("2026-01-01", None, "m")
    path, query, auth = _StandInGateway.seen[-1]
    assert path == "/v1/admin/export"
    assert query == {"kind": ["preference"], "since": ["2026-01-01"], "model": ["m"]}
    assert auth == f"Bearer {KEY}"


def test_refusals_are_clear(
    gateway: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    with pytest.raises(TrainError, match=r"export it as \$NO_SUCH_KEY"):
        source.fetch_export(gateway, "NO_SUCH_KEY")
    monkeypatch.setenv("WRONG_KEY", "sk-wrong")
    with pytest.raises(TrainError, match=r"refused the export \(401\): Invalid admin key\."):
        source.fetch_export(gateway, "WRONG_KEY")
    with pytest.raises(TrainError, match="needs an http"):
        source.fetch_export("ftp://x", "WRONG_KEY")
    # Through the CLI: the one pair is fewer than the minimum, said as a data error.
    monkeypatch.setenv("GATEWAY_ADMIN_KEY", KEY)
    code = main(["reward", "--from-gateway", gateway, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 1
    assert "holds 1 preference pairs; at least 50 are needed" in err


def test_unreachable_gateway(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("K", KEY)
    with pytest.raises(TrainError, match=r"cannot fetch the export from http://127\.0\.0\.1:9/"):
        source.fetch_export("http://127.0.0.1:9", "K", timeout_s=5)


def test_sft_pulls_the_sft_export(
    gateway: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("GATEWAY_ADMIN_KEY", KEY)
    code = main(["sft", "--from-gateway", gateway, "--out", str(tmp_path / "o")])
    assert code == 1
    path, query, _ = _StandInGateway.seen[-1]
    assert path == "/v1/admin/export" and query == {"kind": ["sft"]}
    # The stand-in answers with a preference pair whatever the kind: refused by name.
    assert "a preference pair: train it with `parlance-train dpo`" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
