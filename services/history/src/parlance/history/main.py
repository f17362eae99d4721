"""Entry point: `parlance-history` serves gRPC; `parlance-history migrate` upgrades the schema."""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Sequence

import grpc

from parlance.common import tracing
from parlance.common.grpc_server import GrpcServiceHost
from parlance.common.logging import configure_logging
from parlance.history.config import HistorySettings
from parlance.history.database import check_database, create_engine, create_sessionmaker
from parlance.history.migrate import upgrade_to_head
from parlance.history.servicer import HistoryServicer
from parlance.history.serving import HistoryServing
from parlance.history.v1 import history_pb2, history_pb2_grpc

__all__ = ["HistorySettings", "build_host", "main"]

log = logging.getLogger(__name__)

SERVICE_NAME = history_pb2.DESCRIPTOR.services_by_name["HistoryService"].full_name


def build_host(settings: HistorySettings) -> GrpcServiceHost:
    """The history server: health stays NOT_SERVING until migrations ran and the database
    answered; the engine is disposed after the drain."""
    engine = create_engine(settings)
    serving = HistoryServing(create_sessionmaker(engine))

    def add_servicers(server: grpc.aio.Server) -> Sequence[str]:
        history_pb2_grpc.add_HistoryServiceServicer_to_server(HistoryServicer(serving), server)
        return [SERVICE_NAME]

    async def startup() -> None:
        if settings.migrate_on_start:
            await upgrade_to_head(engine)
            log.info("database schema at head")
        await check_database(engine)

    async def shutdown() -> None:
        await engine.dispose()

    return GrpcServiceHost("history", settings, add_servicers, startup=startup, shutdown=shutdown)


async def serve(settings: HistorySettings) -> None:
    # The grpc.aio server binds to the running loop, so the host is built inside it.
    await build_host(settings).run_until_signal()


async def migrate(settings: HistorySettings) -> None:
    engine = create_engine(settings)
    try:
        await upgrade_to_head(engine)
    finally:
        await engine.dispose()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="parlance-history", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", help="serve gRPC (the default)")
    sub.add_parser("migrate", help="upgrade the database schema to the latest revision")
    args = parser.parse_args(argv)

    settings = HistorySettings()
    configure_logging("history", settings.log_level, settings.log_format)
    if args.command == "migrate":
        asyncio.run(migrate(settings))
        log.info("database schema at head")
        return
    tracing.setup("history")
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
