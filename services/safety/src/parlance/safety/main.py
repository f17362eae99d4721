"""Entry point of the safety service (console script `parlance-safety`)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import grpc

from parlance.common import tracing
from parlance.common.grpc_server import GrpcServiceHost
from parlance.common.logging import configure_logging
from parlance.safety.classifier import Classifier, build_classifier
from parlance.safety.config import SafetySettings
from parlance.safety.policy import Direction, Policy
from parlance.safety.servicer import SERVICE_NAME, SafetyServicer
from parlance.safety.serving import ClassifierLoadError, SafetyServing
from parlance.safety.v1 import safety_pb2_grpc


def build_serving(settings: SafetySettings, classifier: Classifier | None = None) -> SafetyServing:
    if classifier is None:
        classifier = build_classifier(settings)
    # The model's own thresholds per direction fill what the settings leave unset; a global
    # SAFETY_THRESHOLD replaces them as it replaces the default threshold.
    measured = settings.threshold is None
    measured_input = classifier.default_input_thresholds if measured else {}
    measured_output = classifier.default_output_thresholds if measured else {}
    policy = Policy(
        classifier.evaluated_categories,
        settings.threshold if settings.threshold is not None else classifier.default_threshold,
        {
            Direction.INPUT: {**measured_input, **settings.input_thresholds},
            Direction.OUTPUT: {**measured_output, **settings.output_thresholds},
        },
    )
    return SafetyServing(
        classifier,
        policy,
        max_texts_per_call=settings.max_texts_per_call,
        max_text_chars=settings.max_text_chars,
        max_batch_size=settings.max_batch_size,
        max_wait_s=settings.max_wait_ms / 1000,
    )


def build_host(settings: SafetySettings, serving: SafetyServing | None = None) -> GrpcServiceHost:
    """The service, wired; health stays NOT_SERVING until the classifier has loaded."""
    if serving is None:
        serving = build_serving(settings)

    def add_servicers(server: grpc.aio.Server) -> Sequence[str]:
        safety_pb2_grpc.add_SafetyServiceServicer_to_server(SafetyServicer(serving), server)
        return [SERVICE_NAME]

    async def startup() -> None:
        try:
            await serving.start()
        except ClassifierLoadError:
            # Stays up NOT_SERVING (health says so, Classify is UNAVAILABLE, the gateway fails
            # closed) rather than crash-looping, until it is stopped; then start() fails.
            await host.wait_for_stop()
            raise

    host = GrpcServiceHost(
        "safety", settings, add_servicers, startup=startup, shutdown=serving.close
    )
    return host


async def serve(settings: SafetySettings) -> None:
    try:
        await build_host(settings).run_until_signal()
    except ClassifierLoadError:
        # Already logged, with the cause; exit non-zero without a second traceback.
        raise SystemExit(1) from None


def main() -> None:
    settings = SafetySettings()
    configure_logging("safety", settings.log_level, settings.log_format)
    tracing.setup("safety")
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
