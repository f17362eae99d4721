"""Greedy answers of a model (and of its adapter) on fixed prompts, to compare engines.

Issue 17 asks for the adapter's greedy parity between llama.cpp (CPU) and vLLM (GPU): the same
weights in different numerics (llama.cpp runs the Q4_1 GGUF and a GGUF LoRA; vLLM the
dequantized bf16 folder and the PEFT adapter), so answers agree for a while and may part.

    # vLLM (or any OpenAI-compatible server), on the GPU machine:
    python3 bench/greedy_answers.py --url http://127.0.0.1:8200 --models smollm2,tuned \\
        --out greedy_vllm.json
    # llama.cpp, here, with the same adapter converted to a GGUF LoRA:
    .venv/bin/python bench/greedy_answers.py --gguf BASE.gguf --lora smollm2=,tuned=ADAPTER.gguf \\
        --out greedy_llamacpp.json
    # agreement of two files:
    .venv/bin/python bench/greedy_answers.py --compare greedy_vllm.json greedy_llamacpp.json

Agreement is reported per prompt as an exact match and as the length of the common prefix in
words (greedy decoding diverges for good after its first differing token). The prompts and the
comparison are parlance.trainer.parity's, the ones `parlance-train sft|dpo` measures in process
(transformers with the PEFT adapter against llama.cpp with the GGUF LoRA, in tokens) before it
publishes an adapter; its sources are put on sys.path here (no torch needed).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "services" / "trainer" / "src"))

from parlance.trainer.parity import PROMPTS, agreement, messages

MAX_TOKENS = 48


def from_server(url: str, models: list[str]) -> dict[str, list[str]]:
    import httpx

    answers: dict[str, list[str]] = {}
    with httpx.Client(base_url=url, timeout=120) as client:
        for model in models:
            answers[model] = []
            for prompt in PROMPTS:
                body = {"model": model, "messages": messages(prompt), "temperature": 0,
                        "max_tokens": MAX_TOKENS, "seed": 0}  # fmt: skip
                response = client.post("/v1/chat/completions", json=body)
                response.raise_for_status()
                answers[model].append(response.json()["choices"][0]["message"]["content"])
    return answers


def from_llamacpp(gguf: str, loras: list[tuple[str, str]]) -> dict[str, list[str]]:
    from llama_cpp import Llama

    answers: dict[str, list[str]] = {}
    for name, lora in loras:
        llm = Llama(model_path=gguf, lora_path=lora or None, n_ctx=1024, seed=0, verbose=False)
        answers[name] = [
            llm.create_chat_completion(messages(p), temperature=0, max_tokens=MAX_TOKENS)[
                "choices"
            ][0]["message"]["content"]
            for p in PROMPTS
        ]
    return answers


def compare(left: Path, right: Path) -> dict[str, dict[str, Any]]:
    """Per model of both files: parity.agreement of the answers, in words."""
    a, b = json.loads(left.read_text()), json.loads(right.read_text())
    return {
        model: {
            "unit": "words",
            **agreement([x.split() for x in a[model]], [y.split() for y in b[model]]),
        }
        for model in sorted(set(a) & set(b))
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="an OpenAI-compatible server")
    parser.add_argument("--models", default="smollm2", help="comma-separated model names")
    parser.add_argument("--gguf", help="llama.cpp: the base GGUF")
    parser.add_argument("--lora", default="base=", help="name=ADAPTER.gguf,... (empty: base)")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("A", "B"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.compare:
        result: object = compare(*args.compare)
    elif args.url:
        result = from_server(args.url, args.models.split(","))
    elif args.gguf:
        pairs = [tuple(item.split("=", 1)) for item in args.lora.split(",")]
        result = from_llamacpp(args.gguf, pairs)  # type: ignore[arg-type]
    else:
        sys.exit("give --url, --gguf or --compare")
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text[:3000])


if __name__ == "__main__":
    main()
