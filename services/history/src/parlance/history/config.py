"""The history service's settings (env prefix HISTORY_)."""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from parlance.common.config import ServiceSettings

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///.data/history.db"


class HistorySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="HISTORY_", extra="ignore", populate_by_name=True)

    port: int = 50053
    metrics_port: int = 9103
    # SQLAlchemy async URL: sqlite+aiosqlite:///path (embedded default) or
    # postgresql+asyncpg://user:pass@host/db. DATABASE_URL is accepted too, the name most
    # platforms (Heroku, Render, compose files) inject.
    database_url: str = Field(
        default=DEFAULT_DATABASE_URL,
        validation_alias=AliasChoices("HISTORY_DATABASE_URL", "DATABASE_URL", "database_url"),
    )
    # Upgrade the schema to head before serving; turn off where migrations run as a job.
    migrate_on_start: bool = True
    # Connection pool (PostgreSQL); SQLite ignores the sizes.
    db_pool_size: int = 5
    db_max_overflow: int = 10
    # Log SQL statements (debugging only: statements carry message text).
    db_echo: bool = False
