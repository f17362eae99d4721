"""LinearTextModel <-> the LinearTextClassifier message of safety's ExportClassifier: the
safety service sends its model with one, the gateway's input pre-check builds its copy from it
(parlance.common.linear_text, gateway input_precheck.py)."""

from __future__ import annotations

from parlance.common.linear_text import LinearTextModel
from parlance.safety.v1 import safety_pb2


def to_proto(model: LinearTextModel) -> safety_pb2.LinearTextClassifier:
    linear = model.linear
    return safety_pb2.LinearTextClassifier(
        token_pattern=model.analyzer.token_pattern,
        lowercase=model.analyzer.lowercase,
        stop_words=sorted(model.analyzer.stop_words),
        terms=model.terms(),
        idf=model.idf.tolist(),
        weights=linear.weights.ravel().tolist(),
        intercepts=linear.intercepts.tolist(),
        calibration_a=linear.a.tolist(),
        calibration_b=linear.b.tolist(),
    )


def from_proto(message: safety_pb2.LinearTextClassifier) -> LinearTextModel:
    """ValueError when the message's sizes do not fit together (LinearTextModel.from_arrays)."""
    return LinearTextModel.from_arrays(
        token_pattern=message.token_pattern,
        lowercase=message.lowercase,
        stop_words=message.stop_words,
        terms=message.terms,
        idf=message.idf,
        weights=message.weights,
        intercepts=message.intercepts,
        a=message.calibration_a,
        b=message.calibration_b,
    )
