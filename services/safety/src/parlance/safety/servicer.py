"""gRPC servicer for parlance.safety.v1.SafetyService: proto <-> domain conversions only."""

from __future__ import annotations

import grpc

from parlance.common import linear_text_proto
from parlance.common.errors import InvalidArgument
from parlance.common.linear_text import LinearTextModel
from parlance.safety.policy import Direction, Verdict
from parlance.safety.serving import (
    ClassifierInfo,
    ClassifyResult,
    SafetyServing,
)
from parlance.safety.v1 import safety_pb2, safety_pb2_grpc

SERVICE_NAME = safety_pb2.DESCRIPTOR.services_by_name["SafetyService"].full_name

# Keyed by the enum's int value: a request's field arrives as a plain int.
_DIRECTIONS: dict[int, Direction] = {
    safety_pb2.DIRECTION_INPUT: Direction.INPUT,
    safety_pb2.DIRECTION_OUTPUT: Direction.OUTPUT,
}


def direction_from_proto(direction: int) -> Direction:
    try:
        return _DIRECTIONS[direction]
    except KeyError:
        # Thresholds differ per direction, so guessing one would apply the wrong policy.
        raise InvalidArgument(
            "direction must be DIRECTION_INPUT or DIRECTION_OUTPUT", param="direction"
        ) from None


def classification_to_proto(verdict: Verdict) -> safety_pb2.Classification:
    return safety_pb2.Classification(
        flagged=verdict.flagged,
        categories=[
            safety_pb2.CategoryResult(category=c.category, score=c.score, flagged=c.flagged)
            for c in verdict.categories
        ],
    )


def classify_response_to_proto(result: ClassifyResult) -> safety_pb2.ClassifyResponse:
    return safety_pb2.ClassifyResponse(
        results=[classification_to_proto(v) for v in result.verdicts], model=result.model
    )


def classifier_info_to_proto(info: ClassifierInfo) -> safety_pb2.GetClassifierInfoResponse:
    return safety_pb2.GetClassifierInfoResponse(
        model=info.model, evaluated_categories=list(info.evaluated_categories)
    )


class SafetyServicer(safety_pb2_grpc.SafetyServiceServicer):
    def __init__(self, serving: SafetyServing) -> None:
        self._serving = serving
        # The exported model's message, built once (~100k numbers) for the model it shows.
        self._linear: tuple[LinearTextModel, safety_pb2.LinearTextClassifier] | None = None

    async def Classify(
        self, request: safety_pb2.ClassifyRequest, context: grpc.aio.ServicerContext
    ) -> safety_pb2.ClassifyResponse:
        direction = direction_from_proto(request.direction)
        result = await self._serving.classify(list(request.texts), direction)
        return classify_response_to_proto(result)

    async def GetClassifierInfo(
        self, request: safety_pb2.GetClassifierInfoRequest, context: grpc.aio.ServicerContext
    ) -> safety_pb2.GetClassifierInfoResponse:
        return classifier_info_to_proto(self._serving.info())

    async def ExportClassifier(
        self, request: safety_pb2.ExportClassifierRequest, context: grpc.aio.ServicerContext
    ) -> safety_pb2.ExportClassifierResponse:
        exported = await self._serving.export(list(request.check_texts))
        if self._linear is None or self._linear[0] is not exported.linear:
            self._linear = (exported.linear, linear_text_proto.to_proto(exported.linear))
        return safety_pb2.ExportClassifierResponse(
            model=exported.model,
            category=exported.category,
            input_threshold=exported.input_threshold,
            linear=self._linear[1],
            check_scores=exported.check_scores,
        )
