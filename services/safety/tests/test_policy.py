"""Policy verdicts and threshold settings (pure, no server)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from parlance.safety.categories import OPENAI_CATEGORIES
from parlance.safety.config import SafetySettings
from parlance.safety.policy import Direction, Policy


def test_flagged_when_any_category_reaches_its_threshold() -> None:
    policy = Policy(
        ["harassment", "violence"],
        0.8,
        {Direction.OUTPUT: {"violence": 0.5}},
    )
    scores = {"harassment": 0.1, "violence": 0.5}
    on_input = policy.apply(scores, Direction.INPUT)
    on_output = policy.apply(scores, Direction.OUTPUT)
    assert not on_input.flagged
    assert on_output.flagged
    assert [(c.category, c.flagged) for c in on_output.categories] == [
        ("harassment", False),
        ("violence", True),
    ]
    # >= : a score equal to the threshold flags.
    assert policy.apply({"harassment": 0.8, "violence": 0.0}, Direction.INPUT).flagged


def test_overrides_for_unevaluated_categories_are_ignored() -> None:
    policy = Policy(["harassment"], 0.9, {Direction.INPUT: {"hate": 0.1}})
    verdict = policy.apply({"harassment": 0.5}, Direction.INPUT)
    assert [c.category for c in verdict.categories] == ["harassment"]
    assert policy.threshold(Direction.INPUT, "harassment") == 0.9


def test_threshold_maps_are_read_from_json_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFETY_OUTPUT_THRESHOLDS", '{"harassment": 0.4, "hate": 0.6}')
    monkeypatch.setenv("SAFETY_THRESHOLD", "0.9")
    settings = SafetySettings()
    assert settings.output_thresholds == {"harassment": 0.4, "hate": 0.6}
    assert settings.input_thresholds == {}
    assert settings.threshold == 0.9
    assert (settings.port, settings.metrics_port, settings.classifier) == (50052, 9102, "profanity")


def test_unknown_category_in_thresholds_is_rejected() -> None:
    with pytest.raises(ValidationError):
        SafetySettings(input_thresholds={"toxicity": 0.5})


def test_openai_category_list_is_complete() -> None:
    assert len(OPENAI_CATEGORIES) == 13
    assert len(set(OPENAI_CATEGORIES)) == 13


def test_unknown_classifier_fails_at_start_up() -> None:
    from parlance.safety.classifier import build_classifier

    with pytest.raises(ValueError, match="unknown classifier"):
        build_classifier(SafetySettings(classifier="nope"))
