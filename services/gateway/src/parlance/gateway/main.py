"""`parlance-gateway`: runs the HTTP gateway; `parlance-gateway keys ...` manages API keys.

parlance-gateway                                  # serve
parlance-gateway keys create --user alice [--name laptop] [--rpm 60] [--tpm 100000]
parlance-gateway keys list [--user alice] [--all]
parlance-gateway keys revoke key_0123abcd
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile

import uvicorn
from fastapi import FastAPI
from prometheus_client import REGISTRY, CollectorRegistry, multiprocess, start_http_server

from parlance.common import tracing
from parlance.common.logging import configure_logging
from parlance.gateway.app import create_app
from parlance.gateway.auth import KeyLimits
from parlance.gateway.config import GatewaySettings
from parlance.gateway.keystore import SqlKeyStore
from parlance.gateway.routes.admin_keys import key_json


def app_from_env() -> FastAPI:
    """The app of one worker process when GATEWAY_WORKERS > 1 (each builds its own)."""
    settings = GatewaySettings()
    configure_logging("gateway", settings.log_level, settings.log_format)
    tracing.setup("gateway")
    return create_app(settings)


def start_metrics_server(settings: GatewaySettings) -> None:
    """Prometheus /metrics on GATEWAY_METRICS_PORT, an internal port like the gRPC services'
    (the public port does not serve it: it shows every key id with its usage). With several
    workers this process serves the sum over all of them, from the files they write."""
    if settings.metrics_port < 0:
        return
    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    start_http_server(settings.metrics_port, addr=settings.host, registry=registry)


def serve(settings: GatewaySettings) -> None:
    configure_logging("gateway", settings.log_level, settings.log_format)
    if settings.workers <= 1:  # else each worker process sets up its own (app_from_env)
        tracing.setup("gateway")
    # Several worker processes share the port: the gateway is CPU-bound (JSON, SSE, gRPC)
    # at high concurrency, and limits, leases and cache live in Redis, not in the process.
    metrics_dir = None
    if settings.workers > 1:
        # The workers' metrics go to files in this folder, which /metrics sums up; set before
        # the workers start, so that they import prometheus-client in multiprocess mode.
        metrics_dir = tempfile.mkdtemp(prefix="parlance-gateway-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    start_metrics_server(settings)
    app: FastAPI | str = (
        create_app(settings) if settings.workers <= 1 else "parlance.gateway.main:app_from_env"
    )
    # After draining on SIGTERM, uvicorn raises the signal again under the handler found at
    # start, so that the process would die of it (status 143); a completed drain is a clean exit.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    uvicorn.run(
        app,
        factory=settings.workers > 1,
        workers=settings.workers if settings.workers > 1 else None,
        host=settings.host,
        port=settings.port,
        log_config=None,  # keep our structured logging
        access_log=False,  # requests are counted in metrics; access logs would duplicate them
        timeout_graceful_shutdown=int(settings.shutdown_grace_s),
    )
    if metrics_dir is not None:
        shutil.rmtree(metrics_dir, ignore_errors=True)


async def keys_command(settings: GatewaySettings, args: argparse.Namespace) -> int:
    store = SqlKeyStore(settings.database_url)
    try:
        await store.create_schema()
        if args.action == "create":
            key, record = await store.create(
                args.user,
                args.name,
                KeyLimits(
                    rpm=args.rpm,
                    tpm=args.tpm,
                    max_concurrent=args.concurrent,
                    max_tokens=args.max_tokens,
                ),
            )
            print(json.dumps({**key_json(record), "key": key}, indent=2))
            print("Store the key now: it is not shown again.", file=sys.stderr)
        elif args.action == "list":
            for record in await store.list(args.user, args.all):
                print(json.dumps(key_json(record)))
        elif args.action == "revoke":
            if not await store.revoke(args.key_id):
                print(f"no active key {args.key_id}", file=sys.stderr)
                return 1
            print(f"revoked {args.key_id}")
        return 0
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="parlance-gateway")
    sub = parser.add_subparsers(dest="command")
    keys = sub.add_parser("keys", help="manage API keys in the gateway's key store")
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create")
    create.add_argument("--user", required=True)
    create.add_argument("--name", default="")
    create.add_argument("--rpm", type=int)
    create.add_argument("--tpm", type=int)
    create.add_argument("--concurrent", type=int)
    create.add_argument("--max-tokens", type=int)
    listing = actions.add_parser("list")
    listing.add_argument("--user")
    listing.add_argument("--all", action="store_true", help="include revoked keys")
    revoke = actions.add_parser("revoke")
    revoke.add_argument("key_id")
    args = parser.parse_args()
    settings = GatewaySettings()
    if args.command == "keys":
        sys.exit(asyncio.run(keys_command(settings, args)))
    serve(settings)


if __name__ == "__main__":
    main()
