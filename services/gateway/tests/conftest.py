"""The in-process gateway of parlance.testing.inprocess for the gateway's own tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from parlance.testing.inprocess import InProcessGateway, inprocess_gateway


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[InProcessGateway]:
    """A gateway with the default settings, fakes of its gRPC services and the real Redis."""
    async with inprocess_gateway(tmp_path) as gateway:
        yield gateway
