"""The client of the safety service."""

from __future__ import annotations

from parlance.gateway.clients.channel import BaseClient
from parlance.safety.v1 import safety_pb2, safety_pb2_grpc

# How many characters a second the slowest shipped classifier reads (the embedded MiniLM head
# on 2 busy cores, windows and sentence units included; ~5,600/s idle for short texts): a
# Classify call's deadline grows by its text at this rate, so that a long chat prompt or a
# 256-input /v1/moderations call gets the time it needs instead of a 503.
CLASSIFIER_CHARS_PER_S = 2_000.0


def classify_deadline(base_s: float, texts: list[str]) -> float:
    """The deadline of one Classify call: the configured one, plus the time its text needs."""
    return base_s + sum(len(t) for t in texts) / CLASSIFIER_CHARS_PER_S


class SafetyClient(BaseClient):
    dependency = "safety"
    idempotent = ("parlance.safety.v1.SafetyService",)
    stub_class = safety_pb2_grpc.SafetyServiceStub
    stub: safety_pb2_grpc.SafetyServiceStub

    async def classify(
        self, texts: list[str], direction: safety_pb2.Direction
    ) -> safety_pb2.ClassifyResponse:
        return await self._unary(
            self.stub.Classify,
            safety_pb2.ClassifyRequest(texts=texts, direction=direction),
            timeout_s=classify_deadline(self.timeout_s, texts),
        )

    async def info(self) -> safety_pb2.GetClassifierInfoResponse:
        return await self._unary(self.stub.GetClassifierInfo, safety_pb2.GetClassifierInfoRequest())
