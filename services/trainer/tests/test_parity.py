"""parity.py's comparison and its "the GGUF LoRA did not apply" detector, on hand-made answers
(the measurement on a trained adapter: test_adapter_train.py)."""

from __future__ import annotations

import pytest

from parlance.trainer import parity
from parlance.trainer.cli import parser
from parlance.trainer.errors import TrainError

BASE = [[1, 2, 3, 4], [5, 6, 7], [8, 9]]
ADAPTED = [[1, 2, 30, 40], [5, 6, 7], [80, 90, 91]]


def test_agreement_counts_exact_answers_and_common_prefixes() -> None:
    figures = parity.agreement(ADAPTED, BASE)
    assert figures == {
        "prompts": 3,
        "exact": 1,
        "exact_rate": 0.3333,
        # 2 shared tokens, then 3 (identical), then 0.
        "mean_common_prefix": round(5 / 3, 3),
        "mean_length": round(10 / 3, 3),
    }
    assert parity.agreement([], []) == {
        "prompts": 0,
        "exact": 0,
        "exact_rate": 0.0,
        "mean_common_prefix": 0.0,
        "mean_length": 0.0,
    }
    # Words work the same (bench/greedy_answers.py compares text from two machines).
    words = parity.agreement(["a b c".split(), "x y".split()], ["a b d".split(), "x y".split()])
    assert (words["exact"], words["mean_common_prefix"]) == (1, 2.0)
    with pytest.raises(ValueError):
        parity.agreement(BASE, BASE[:2])


def _answers(base: list[list[int]], adapter: list[list[int]], delta: float) -> parity.Answers:
    return parity.Answers(base=base, adapter=adapter, logit_delta=delta)


def test_a_gguf_lora_that_changes_nothing_in_llama_cpp_is_refused() -> None:
    hf = _answers(BASE, ADAPTED, 2.5)
    # llama.cpp answers with the LoRA exactly as without it, and its logits did not move.
    cpp = _answers(BASE, [list(a) for a in BASE], 0.0)
    assert parity.lora_not_applied(hf, cpp)
    with pytest.raises(TrainError, match=r"the GGUF LoRA did not apply in llama\.cpp") as err:
        parity.judge(hf, cpp)
    assert "all 3 parity prompts" in str(err.value)
    assert "changes 2 of transformers' answers" in str(err.value)
    # A LoRA that moves llama.cpp's logits a tenth as far as PEFT's did not apply as trained.
    assert parity.lora_not_applied(hf, _answers(BASE, BASE, 0.25))


def test_llama_cpp_answers_that_change_or_a_weak_adapter_pass() -> None:
    hf = _answers(BASE, ADAPTED, 2.5)
    # llama.cpp's answers changed on one prompt: the LoRA applied (numerics differ elsewhere).
    cpp = _answers(BASE, [BASE[0], BASE[1], [80, 90]], 2.4)
    assert not parity.lora_not_applied(hf, cpp)
    block = parity.judge(hf, cpp)
    assert block["adapter"]["prompts"] == 3 and block["adapter"]["exact"] == 1
    assert block["base"]["exact"] == 3
    assert block["adapter_vs_base"]["transformers"]["exact"] == 1
    assert block["adapter_vs_base"]["llamacpp"]["exact"] == 2
    assert block["first_token_logit_delta"] == {"transformers": 2.5, "llamacpp": 2.4}
    # A weak adapter: transformers' answers changed (a near tie), llama.cpp's did not, but
    # llama.cpp's logits moved as far as transformers': the LoRA applied.
    assert not parity.lora_not_applied(hf, _answers(BASE, BASE, 2.3))
    # Neither engine's answers changed: nothing to tell.
    assert not parity.lora_not_applied(_answers(BASE, BASE, 0.0), _answers(BASE, BASE, 0.0))


def test_measure_skips_with_a_reason() -> None:
    common = {"folder": None, "tokenizer": None, "peft_dir": None, "gguf_lora": None}
    skipped = parity.measure(count=0, gguf=None, threads=1, **common)  # type: ignore[arg-type]
    assert skipped == {"skipped": "--parity-prompts 0"}
    no_gguf = parity.measure(count=8, gguf=None, threads=1, **common)  # type: ignore[arg-type]
    assert "no GGUF" in no_gguf["skipped"]


def test_cli_bounds_the_prompt_count() -> None:
    args = ["dpo", "--data", "x.jsonl", "--out", "o"]
    assert parser().parse_args(args).parity_prompts == parity.DEFAULT_PROMPTS
    assert parser().parse_args([*args, "--parity-prompts", "0"]).parity_prompts == 0
    with pytest.raises(SystemExit):
        parser().parse_args([*args, "--parity-prompts", str(len(parity.PROMPTS) + 1)])
