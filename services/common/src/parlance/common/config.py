"""The settings every service has; each service subclasses it with its own env prefix."""

from __future__ import annotations

from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """Common settings. Subclasses set `model_config = SettingsConfigDict(env_prefix=...)`."""

    model_config = SettingsConfigDict(extra="ignore")

    host: str = "127.0.0.1"
    # gRPC port; 0 picks a free port (tests), the chosen one is logged and written to port_file.
    port: int = 0
    # Prometheus /metrics HTTP port; 0 picks a free one, -1 disables it.
    metrics_port: int = -1
    # Where the bound ports are written as JSON once the server listens (tests, `make up`).
    port_file: str | None = None
    log_level: str = "INFO"
    # "json" in containers, "text" for people at a terminal.
    log_format: Literal["json", "text"] = "text"
    # Seconds that in-flight calls get to finish after SIGTERM.
    shutdown_grace_s: float = 10.0
