"""Greedy parity of an adapter between the engines that serve it, measured before publication.

The same prompts (the chat template, greedy, a few dozen new tokens) go through
- transformers: the base's HF folder in float32 with the PEFT adapter (the weights and LoRA that
  vLLM loads; vLLM's own kernels and bf16 are a GPU matter: bench/greedy_answers.py), and
- llama.cpp: the base's GGUF with the converted GGUF LoRA (what the generator's llama.cpp engine
  serves),
each with and without the adapter. Both engines get the same prompt token ids, so what differs
is numerics: the embedded base is Q4_1, and transformers runs its dequantized weights while
llama.cpp runs quantized matmuls, so greedy answers agree for a while and may part after a
near tie. The figures are a measurement, not a gate, with one exception: when the GGUF LoRA
leaves llama.cpp's answers exactly as the base's while the PEFT adapter changes transformers'
answers, and llama.cpp's logits move far less than transformers' (lora_not_applied), the
conversion lost the adapter, and nothing is published.

No torch or llama.cpp import at module level: bench/greedy_answers.py imports the prompts and
the comparison on machines that have neither.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parlance.trainer.errors import TrainError

SYSTEM = "You are a helpful assistant."
PROMPTS = (
    "How do I start a herb garden on a balcony?",
    "What should I pack for a weekend ski trip?",
    "Give me tips for my first pottery class.",
    "How can I plan a family reunion on a budget?",
    "What is a good way to learn to play the drums?",
    "How do I prepare for a video call job interview?",
    "Suggest a simple meal plan for a busy week.",
    "How should I organise a garage sale?",
    "What do I need to know before adopting a cat?",
    "How can I build a reading habit?",
    "Explain how to set up a home gym in a small room.",
    "What are the steps to write a cover letter?",
    "How do I care for a new pair of hiking boots?",
    "What makes a dinner party go well?",
    "How do I keep a travel budget?",
    "What should a beginner know about kayaking?",
)
DEFAULT_PROMPTS = 8
MAX_NEW_TOKENS = 32
# lora_not_applied: llama.cpp's logits move less than this share of transformers' (a LoRA that
# applies moves both alike: the delta is the LoRA's own f32 contribution in each engine).
WEAK_SHARE = 0.5
NOTE = (
    "Same prompt token ids in both engines; transformers runs the base GGUF's dequantized "
    "weights in float32 with the PEFT adapter, llama.cpp the Q4_1 GGUF's quantized matmuls "
    "with the GGUF LoRA: greedy answers may part after a near tie. A measurement, not a gate."
)


def messages(prompt: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]


def common_prefix(a: Sequence[Any], b: Sequence[Any]) -> int:
    """How many leading items a and b share (greedy decoding parts for good at the first)."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def agreement(left: Sequence[Sequence[Any]], right: Sequence[Sequence[Any]]) -> dict[str, Any]:
    """Per-prompt agreement of two engines' answers, each a sequence of tokens (or words):
    exact matches and the mean common prefix, in the answers' own unit."""
    pairs = list(zip(left, right, strict=True))
    n = len(pairs)
    exact = sum(list(a) == list(b) for a, b in pairs)
    return {
        "prompts": n,
        "exact": exact,
        "exact_rate": round(exact / n, 4) if n else 0.0,
        "mean_common_prefix": round(sum(common_prefix(a, b) for a, b in pairs) / n, 3)
        if n
        else 0.0,
        "mean_length": round(sum(len(a) for a, _ in pairs) / n, 3) if n else 0.0,
    }


@dataclass(frozen=True, slots=True)
class Answers:
    """One engine's greedy answers (token ids, cut before the first stop token) on the prompts,
    without and with the adapter, and how far the adapter moves the first answer token's
    logits (the mean over prompts of the largest absolute change)."""

    base: list[list[int]]
    adapter: list[list[int]]
    logit_delta: float


def lora_not_applied(transformers: Answers, llamacpp: Answers) -> bool:
    """The GGUF LoRA did not apply: llama.cpp answers as its base on every prompt while the PEFT
    adapter changes transformers' answers, and llama.cpp's logits move far less than
    transformers' (so a weak adapter whose only change was a near tie in float32 passes)."""
    return (
        llamacpp.adapter == llamacpp.base
        and transformers.adapter != transformers.base
        and llamacpp.logit_delta < WEAK_SHARE * transformers.logit_delta
    )


def skipped(reason: str) -> dict[str, Any]:
    return {"skipped": reason}


def _prompt_ids(tokenizer: Any, count: int) -> list[list[int]]:
    ids = []
    for prompt in PROMPTS[:count]:
        out = tokenizer.apply_chat_template(
            messages(prompt), add_generation_prompt=True, tokenize=True
        )
        ids.append(list(out["input_ids"] if isinstance(out, Mapping) else out))
    return ids


def _cut(tokens: Sequence[int], stops: frozenset[int]) -> list[int]:
    out = []
    for token in tokens:
        if token in stops:
            break
        out.append(int(token))
    return out


def _transformers(
    folder: Path, peft_dir: Path, prompts: list[list[int]], stops: frozenset[int], pad: int
) -> Answers:
    """Greedy answers of the base folder (float32, CPU) and of the PEFT adapter on it, the
    prompts batched (left-padded)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
    model: Any = PeftModel.from_pretrained(base, peft_dir).eval()
    width = max(len(p) for p in prompts)
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])

    def greedy() -> tuple[list[list[int]], Any]:
        with torch.inference_mode():
            out: Any = model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                do_sample=False,
                max_new_tokens=MAX_NEW_TOKENS,
                eos_token_id=sorted(stops),
                pad_token_id=pad,
                repetition_penalty=1.0,
                temperature=None,
                top_p=None,
                top_k=None,
                return_dict_in_generate=True,
                output_logits=True,
            )
        answers = [_cut(row[width:].tolist(), stops) for row in out.sequences]
        return answers, out.logits[0].float()

    adapted, adapted_logits = greedy()
    with model.disable_adapter():
        plain, plain_logits = greedy()
    delta = (adapted_logits - plain_logits).abs().amax(dim=-1).mean().item()
    return Answers(base=plain, adapter=adapted, logit_delta=float(delta))


def _llamacpp(
    gguf: Path, lora: Path | None, prompts: list[list[int]], stops: frozenset[int], threads: int
) -> tuple[list[list[int]], list[Any]]:
    """Greedy answers (argmax of each step's logits, as the engine's temperature 0) of the GGUF,
    with the GGUF LoRA when given, and each prompt's first-step logits."""
    import llama_cpp
    import numpy as np

    llm = llama_cpp.Llama(
        model_path=str(gguf),
        lora_path=str(lora) if lora else None,
        n_ctx=max(len(p) for p in prompts) + MAX_NEW_TOKENS + 8,
        n_threads=threads,
        # Its default is every core: prompt batches would spin threads against the trainer's
        # one (on a busy 2-core machine 31 prompt tokens cost 2 to 5 CPU seconds, not 0.3).
        n_threads_batch=threads,
        seed=0,
        verbose=False,
    )
    try:
        vocab = llm.n_vocab()

        def logits() -> Any:
            row = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
            return np.ctypeslib.as_array(row, shape=(vocab,)).copy()

        answers, firsts = [], []
        for prompt in prompts:
            llm.reset()
            llm.eval(prompt)
            scores = logits()
            firsts.append(scores)
            tokens: list[int] = []
            while len(tokens) < MAX_NEW_TOKENS:
                token = int(scores.argmax())
                if token in stops:
                    break
                tokens.append(token)
                llm.eval([token])
                scores = logits()
            answers.append(tokens)
        return answers, firsts
    finally:
        llm.close()


def _llamacpp_pair(
    gguf: Path, lora: Path, prompts: list[list[int]], stops: frozenset[int], threads: int
) -> Answers:
    base, base_first = _llamacpp(gguf, None, prompts, stops, threads)
    adapted, adapted_first = _llamacpp(gguf, lora, prompts, stops, threads)
    deltas = [float(abs(a - b).max()) for a, b in zip(adapted_first, base_first, strict=True)]
    return Answers(base=base, adapter=adapted, logit_delta=sum(deltas) / len(deltas))


def _versions() -> dict[str, str]:
    from importlib import metadata

    found = {}
    for dist in ("transformers", "peft", "torch", "llama-cpp-python"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = "not installed"
    return found


def measure(
    *,
    count: int,
    folder: Path,
    tokenizer: Any,
    peft_dir: Path,
    gguf: Path | None,
    gguf_lora: Path,
    threads: int,
) -> dict[str, Any]:
    """The manifest's `parity` block; TrainError when the GGUF LoRA did not apply."""
    if count <= 0:
        return skipped("--parity-prompts 0")
    if gguf is None:
        return skipped("the base is an HF folder: no GGUF of it is known to run llama.cpp on")
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return skipped("llama-cpp-python is not installed (the generator's llama.cpp engine)")
    started, cpu = time.perf_counter(), time.process_time()
    prompts = _prompt_ids(tokenizer, count)
    # lm_base.load made the tokenizer's eos the GGUF's (the token llama.cpp's engine stops on).
    stops = frozenset({int(tokenizer.eos_token_id)})
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(stops)
    hf = _transformers(folder, peft_dir, prompts, stops, pad)
    cpp = _llamacpp_pair(gguf, gguf_lora, prompts, stops, threads)
    block = judge(hf, cpp)
    block["answers"] = {
        f"{engine}_{variant}": [tokenizer.decode(a, skip_special_tokens=True) for a in answers]
        for engine, run in (("transformers", hf), ("llamacpp", cpp))
        for variant, answers in (("base", run.base), ("adapter", run.adapter))
    }
    block["seconds"] = round(time.perf_counter() - started, 2)
    block["cpu_seconds"] = round(time.process_time() - cpu, 2)
    block["engines"] = {
        "transformers": {"weights": f"{folder.name} (float32)", "adapter": "PEFT", "device": "cpu"},
        "llamacpp": {"weights": gguf.name, "adapter": gguf_lora.name, "threads": threads},
    }
    block["versions"] = _versions()
    return block


def judge(transformers: Answers, llamacpp: Answers) -> dict[str, Any]:
    """The figures of both engines' answers; TrainError when lora_not_applied."""
    if lora_not_applied(transformers, llamacpp):
        changed = sum(a != b for a, b in zip(transformers.adapter, transformers.base, strict=True))
        raise TrainError(
            f"the GGUF LoRA did not apply in llama.cpp: with it, llama.cpp's greedy answers are "
            f"its base's on all {len(llamacpp.base)} parity prompts (first-token logits moved "
            f"{llamacpp.logit_delta:.3g}), while the PEFT adapter changes {changed} of "
            f"transformers' answers (logits moved {transformers.logit_delta:.3g}); the "
            "conversion lost the adapter, so nothing was published (--parity-prompts 0 skips "
            "this check)"
        )
    return {
        "prompts": len(transformers.base),
        "max_new_tokens": MAX_NEW_TOKENS,
        "decoding": "greedy, the base's chat template with a system prompt",
        "unit": "tokens",
        "note": NOTE,
        "adapter": agreement(transformers.adapter, llamacpp.adapter),
        "base": agreement(transformers.base, llamacpp.base),
        "adapter_vs_base": {
            "transformers": agreement(transformers.adapter, transformers.base),
            "llamacpp": agreement(llamacpp.adapter, llamacpp.base),
        },
        "first_token_logit_delta": {
            "transformers": round(transformers.logit_delta, 4),
            "llamacpp": round(llamacpp.logit_delta, 4),
        },
    }
