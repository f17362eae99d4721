"""`parlance-gateway`: runs the HTTP gateway with uvicorn."""

from __future__ import annotations

import uvicorn

from parlance.common.logging import configure_logging
from parlance.gateway.app import create_app
from parlance.gateway.config import GatewaySettings


def main() -> None:
    settings = GatewaySettings()
    configure_logging("gateway", settings.log_level, settings.log_format)
    app = create_app(settings)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,  # keep our structured logging
        access_log=False,  # requests are counted in metrics; access logs would duplicate them
        timeout_graceful_shutdown=30,
    )


if __name__ == "__main__":
    main()
