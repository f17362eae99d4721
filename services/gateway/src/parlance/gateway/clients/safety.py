"""The client of the safety service."""

from __future__ import annotations

from parlance.gateway.clients.channel import DEFAULT_KEEPALIVE, BaseClient, KeepAlive, make_channel
from parlance.safety.v1 import safety_pb2, safety_pb2_grpc


class SafetyClient(BaseClient):
    dependency = "safety"

    def __init__(
        self,
        target: str,
        timeout_s: float,
        retry_after_s: int,
        keepalive: KeepAlive = DEFAULT_KEEPALIVE,
    ) -> None:
        super().__init__(
            make_channel(target, ["parlance.safety.v1.SafetyService"], keepalive),
            timeout_s,
            retry_after_s,
        )
        self.stub = safety_pb2_grpc.SafetyServiceStub(self.channel)

    async def classify(
        self, texts: list[str], direction: safety_pb2.Direction
    ) -> safety_pb2.ClassifyResponse:
        return await self._unary(
            self.stub.Classify, safety_pb2.ClassifyRequest(texts=texts, direction=direction)
        )

    async def info(self) -> safety_pb2.GetClassifierInfoResponse:
        return await self._unary(self.stub.GetClassifierInfo, safety_pb2.GetClassifierInfoRequest())
