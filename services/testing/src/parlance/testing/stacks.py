"""Stacks shared between test modules. Starting the model services is most of a stack's
start-up, so stacks whose generator (or safety) settings are equal share that process; each
stack keeps its own history (its own database) and its own gateway, so what one module
stores or limits never shows in another. Tests that kill, freeze or signal a service ask for
a private stack (`share=False`)."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest

from parlance.testing.keys import ALICE_KEY
from parlance.testing.processes import ServiceProcess, Stack, stack_env

# History is never shared: every stack's conversations stay its own.
SHAREABLE = ("generator", "safety")
BACKENDS = ("generator", "safety", "history")
# As ServiceProcess.stop: SIGTERM, then SIGKILL after this long.
STOP_TIMEOUT_S = 15.0


def stop_together(services: Iterable[ServiceProcess], timeout_s: float = STOP_TIMEOUT_S) -> None:
    """ServiceProcess.stop for several processes at once: all get SIGTERM first, then each is
    waited for (killed past the timeout). The services of a stack shut down side by side
    instead of one after the other (each takes a second or more on a busy 2-core machine)."""
    live = []
    for service in services:
        service.resume()  # a paused (SIGSTOP) process could not take SIGTERM
        if service.running:
            service.process.send_signal(signal.SIGTERM)
            live.append(service)
    deadline = time.monotonic() + timeout_s
    for service in live:
        try:
            service.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            service.process.kill()
            service.process.wait(5)


@dataclass
class SharedStack(Stack):
    """A stack whose `shared` services belong to the pool: stop() leaves them running."""

    shared: set[str] = field(default_factory=set)

    def stop(self) -> None:
        # Stack comes from a module mypy cannot follow (processes.py), so its fields are unknown.
        everything: dict[str, Any] = self.services  # type: ignore[has-type]
        # What Stack.stop stops, in its order: the gateways (extra ones that tests added too),
        # then what they call; here each group at once.
        own = {n: s for n, s in everything.items() if n not in self.shared}
        stop_together(s for n, s in own.items() if n.startswith("gateway"))
        stop_together(own[n] for n in BACKENDS if n in own)
        # Stack.stop, with nothing left to stop, still ends a Redis the stack started itself.
        self.services = {}
        try:
            super().stop()
        finally:
            self.services = everything


def _settings_key(name: str, env: dict[str, str]) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, tuple(sorted(env.items()))


class StackPool:
    """Starts stacks for a test session and stops the shared services at its end."""

    def __init__(self, tmp: pytest.TempPathFactory, redis_url: str) -> None:
        self._tmp = tmp
        self._redis_url = redis_url
        self._services: dict[tuple[str, tuple[tuple[str, str], ...]], ServiceProcess] = {}

    def start(
        self,
        name: str = "stack",
        gateway_env: dict[str, str] | None = None,
        env: dict[str, dict[str, str]] | None = None,
        *,
        share: bool = True,
        redis_url: str | None = None,
    ) -> Stack:
        """A stack with these settings; with `share`, its generator and safety are the pool's
        processes of equal settings (started now if there is none yet)."""
        stack = SharedStack(
            data_dir=self._tmp.mktemp(name),
            fixed_ports=False,
            api_key=ALICE_KEY,
            redis_url=self._redis_url if redis_url is None else redis_url,
            extra_env=stack_env(gateway_env, env),
        )
        stack.build()
        if share:
            self._share(stack)
        try:
            for service in BACKENDS:
                if not stack.services[service].running:
                    stack.services[service].start()
            for service in BACKENDS:
                stack.wait_ready(service)
            stack.start_service("gateway")
        except Exception:
            stack.stop()
            raise
        return stack

    def _share(self, stack: SharedStack) -> None:
        for service in SHAREABLE:
            key = _settings_key(service, stack.extra_env.get(service, {}))
            existing = self._services.get(key)
            if existing is not None and existing.running:
                stack.services[service] = existing
            else:
                self._services[key] = stack.services[service]
            stack.shared.add(service)
        gateway = stack.services["gateway"].env
        for service in SHAREABLE:
            port = stack.services[service].grpc_port
            gateway[f"GATEWAY_{service.upper()}_URL"] = f"127.0.0.1:{port}"

    def close(self) -> None:
        stop_together(self._services.values())
        self._services.clear()
