"""`make up`'s start-up (scripts/devstack.py) before any service runs: ports from the services'
own settings, a port another process holds refused by name (a second `make up` used to report
itself up while the first stack answered its readiness checks), Ctrl-C honoured while the
services load. Nothing here starts a service."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from parlance.testing.processes import _load_devstack, free_port

devstack = _load_devstack()


def fixed_stack(tmp_path: Path, **fields: object) -> object:
    # redis_url "" : no Redis, so that building starts no redis-server either.
    return devstack.Stack(data_dir=tmp_path, fixed_ports=True, redis_url="", **fields)


def test_ports_come_from_the_services_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ports = {name: free_port() for name in ("GATEWAY_PORT", "SAFETY_PORT", "HISTORY_METRICS_PORT")}
    for name, port in ports.items():
        monkeypatch.setenv(name, str(port))
    stack = fixed_stack(tmp_path)
    stack.build()  # type: ignore[attr-defined]
    services = stack.services  # type: ignore[attr-defined]
    assert services["gateway"].http_port == ports["GATEWAY_PORT"]
    assert services["safety"].grpc_port == ports["SAFETY_PORT"]
    assert services["history"].metrics_port == ports["HISTORY_METRICS_PORT"]
    assert services["generator"].grpc_port == 50051  # the default where nothing is set
    for bad in ("eight thousand", "0", "70000", "-1"):
        monkeypatch.setenv("GATEWAY_PORT", bad)
        with pytest.raises(devstack.StartupError, match=f"GATEWAY_PORT='{bad}'"):
            fixed_stack(tmp_path).build()  # type: ignore[attr-defined]
    monkeypatch.delenv("GATEWAY_PORT")
    # -1 is a metrics port's "off", as the service's own setting has it: passed on, not checked.
    monkeypatch.setenv("SAFETY_METRICS_PORT", "-1")
    stack = fixed_stack(tmp_path)
    stack.build()  # type: ignore[attr-defined]
    assert stack.services["safety"].metrics_port == -1  # type: ignore[attr-defined]


def test_a_port_in_use_is_refused_by_name_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        monkeypatch.setenv("GATEWAY_PORT", str(port))
        stack = fixed_stack(tmp_path)
        with pytest.raises(devstack.StartupError) as refused:
            stack.start()  # type: ignore[attr-defined]
    assert f"{port} (gateway HTTP, GATEWAY_PORT)" in str(refused.value)
    assert not any(s.running for s in stack.services.values())  # type: ignore[attr-defined]


def test_ctrl_c_during_start_up_is_honoured_while_waiting(tmp_path: Path) -> None:
    stack = fixed_stack(tmp_path, stop_requested=lambda: True)
    stack.build()  # type: ignore[attr-defined]
    with pytest.raises(devstack.StartupInterrupted):
        stack.wait_ready("generator", timeout_s=60)  # type: ignore[attr-defined]
