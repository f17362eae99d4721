"""The one log line of a Generate call carries the engine's own time to first token, to set
beside a caller's (bench/ttft_c1.py, the gateway's Server-Timing)."""

from __future__ import annotations

import logging

import pytest

from parlance.generator.engine.base import ChoiceDelta, GenerationStep
from parlance.generator.serving import _CallMetrics


def finished(caplog: pytest.LogCaptureFixture) -> logging.LogRecord:
    (record,) = [r for r in caplog.records if r.getMessage() == "generate finished"]
    return record


def test_the_log_line_has_the_time_to_first_token(caplog: pytest.LogCaptureFixture) -> None:
    call = _CallMetrics("scripted")
    call.arrived -= 0.25  # arrived 250 ms ago
    call.observe(GenerationStep(choices=[ChoiceDelta(index=0, text="Hi", token_count=1)]))
    with caplog.at_level(logging.INFO, logger="parlance.generator.serving"):
        call.finish()
    ttft_ms = finished(caplog).ttft_ms  # type: ignore[attr-defined]
    assert 250 <= ttft_ms < 250 + 60_000


def test_a_call_without_tokens_has_none(caplog: pytest.LogCaptureFixture) -> None:
    call = _CallMetrics("scripted")
    with caplog.at_level(logging.INFO, logger="parlance.generator.serving"):
        call.finish()
    assert finished(caplog).ttft_ms is None  # type: ignore[attr-defined]
