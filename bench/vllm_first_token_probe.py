"""Where the generator's time to first token goes, inside the process, on a GPU: the engine as
the generator runs it (parlance.generator.engine.vllm.VllmEngine), without gRPC or the gateway.

    source /tmp/stage/env.sh && PYTHONPATH=services/common/src:services/generator/src:$PYTHONPATH \
        python3 bench/vllm_first_token_probe.py [--requests 30]

For two kinds of prompt (250 words from a five-word vocabulary, and 256 random token ids
decoded to text, as `vllm bench serve --dataset-name random` makes them), taken in turn, it
times: the generator's tokenization (chat template, then encode, in its tokenizer thread),
AsyncLLM.generate from token ids (what the generator sends) to the first output, and the
same from the templated text (what `vllm serve` hands the engine). The medians tell which
step depends on the prompt.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import time
import uuid

from lib.report import Report, table
from lib.stats import percentile

from parlance.generator.engine.base import ChatMessage
from parlance.generator.engine.vllm import VllmEngine, engine_args_kwargs


def words(rng: random.Random) -> str:
    return " ".join(rng.choice(["alpha", "beta", "gamma", "delta", "omega"]) for _ in range(250))


async def first_output_ms(llm: object, prompt: object) -> float:
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    params = SamplingParams(max_tokens=16, temperature=1.0, output_kind=RequestOutputKind.DELTA)
    started = time.perf_counter()
    first = 0.0
    async for _ in llm.generate(prompt, params, str(uuid.uuid4())):  # type: ignore[attr-defined]
        first = first or (time.perf_counter() - started) * 1000
    return first


async def main() -> None:
    from vllm.inputs import tokens_input

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=30)
    args = parser.parse_args()
    model = os.environ["SMOLLM2_HF_DIR"]
    engine = VllmEngine(
        served_model_name="probe",
        engine_kwargs=engine_args_kwargs(
            model=model, served_model_name="probe", max_model_len=2048, gpu_memory_utilization=0.5
        ),
    )
    await engine.start()
    llm = engine._llm
    tokenizer = engine._tokenizer
    rng = random.Random(0)
    kinds = {
        "words": lambda: words(rng),
        "random tokens": lambda: tokenizer.decode(
            [rng.randrange(tokenizer.vocab_size) for _ in range(256)]
        ),
    }
    results: dict[str, dict[str, list[float]]] = {k: {} for k in kinds}
    for i in range(args.requests + 2):
        for kind, make in kinds.items():
            # A fresh prompt for every call: a prompt seen before would hit the prefix cache
            # and skip its prefill (the first version of this probe reused one prompt for
            # both calls and so measured the second one against a cached prefix).
            messages = [ChatMessage("user", make())]
            started = time.perf_counter()
            ids = await engine._tokenize_off_loop(messages, None)
            tokenize_ms = (time.perf_counter() - started) * 1000
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": make()}], tokenize=False, add_generation_prompt=True
            )
            # Alternate which goes first, so that neither always follows the other.
            if i % 2:
                from_text = await first_output_ms(llm, text)
                from_ids = await first_output_ms(llm, tokens_input(ids))
            else:
                from_ids = await first_output_ms(llm, tokens_input(ids))
                from_text = await first_output_ms(llm, text)
            if i < 2:
                continue  # warm-up
            for name, value in (
                ("tokenize (generator)", tokenize_ms),
                ("first output from token ids", from_ids),
                ("first output from text", from_text),
                ("prompt tokens", float(len(ids))),
            ):
                results[kind].setdefault(name, []).append(value)
    report = Report(
        "vLLM in process: where the first token's time goes (bench/vllm_first_token_probe.py)",
        f"Medians (p50) of {args.requests} calls per prompt kind, ms (prompt tokens: a count).",
    )
    for kind, parts in results.items():
        rows = [[name, f"{percentile(values, 50):.2f}"] for name, values in parts.items()]
        report.section(kind, *table(["step", "p50"], rows))
    report.write(None)
    await engine.close()
    llm.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
