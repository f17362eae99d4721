"""The client of the safety service."""

from __future__ import annotations

from parlance.gateway.clients.channel import BaseClient
from parlance.safety.v1 import safety_pb2, safety_pb2_grpc


class SafetyClient(BaseClient):
    dependency = "safety"
    idempotent = ("parlance.safety.v1.SafetyService",)
    stub_class = safety_pb2_grpc.SafetyServiceStub
    stub: safety_pb2_grpc.SafetyServiceStub

    async def classify(
        self, texts: list[str], direction: safety_pb2.Direction
    ) -> safety_pb2.ClassifyResponse:
        return await self._unary(
            self.stub.Classify, safety_pb2.ClassifyRequest(texts=texts, direction=direction)
        )

    async def info(self) -> safety_pb2.GetClassifierInfoResponse:
        return await self._unary(self.stub.GetClassifierInfo, safety_pb2.GetClassifierInfoRequest())
