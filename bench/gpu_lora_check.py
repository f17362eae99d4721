"""A LoRA adapter served by the generator next to its base, end to end over gRPC: the check for
the GPU machine (vLLM), also runnable on a CPU with the llama.cpp engine.

It starts a generator in this process (GENERATOR_MODELS: the base, engine vLLM with
enable_lora, or llama.cpp), registers the adapter with LoadModel (task chat, parent = the base),
and checks, on fixed prompts, greedy:
  - the adapter's answers differ from the base's (how many of the prompts);
  - the base answers the same after adapter requests (no state leak), and the adapter the same
    the second time;
  - base and adapter requests sent together get the answers they get alone;
  - UnloadModel while one of the adapter's requests runs: that request still ends with all its
    tokens, the adapter is no longer listed, a new request for it is NOT_FOUND, and a reload of
    the same folder under the same id is accepted.
And a rough throughput figure: output tokens/s of N concurrent requests (ignore_eos, fixed
length) on the base, then on the adapter (vLLM's LoRA kernels cost something; `vllm bench
serve` is the reference measurement, this is the same engine through the generator).
With --parity-llamacpp (needs llama-cpp-python, the SmolLM2 GGUF and the adapter's GGUF LoRA),
the same adapter is also loaded on a llama.cpp model in the same generator and its greedy
answers are compared with vLLM's (they differ in numerics: agreement is reported, not required).

On the GPU machine (../shared/gpu/README.md; the kit's env.sh sets $SMOLLM2_HF_DIR):
    source /tmp/stage/env.sh
    PYTHONPATH=services/common/src:services/generator/src:$PYTHONPATH python3 \\
        bench/gpu_lora_check.py --adapter /path/to/<name>@<hash8> --model "$SMOLLM2_HF_DIR" \\
        --out "$OUT/gpu_lora_check.json"
The adapter folder is parlance-train's output (peft/ and adapter.gguf) or any folder holding
one PEFT LoRA folder (vLLM) / one GGUF LoRA (llama.cpp). On a CPU:
    .venv/bin/python bench/gpu_lora_check.py --engine llamacpp --adapter DIR --out x.json
Exit status 0 when every check passed (throughput and parity are figures, not checks).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import grpc

from parlance.generator.config import GeneratorSettings
from parlance.generator.main import create_host
from parlance.generator.v1 import generator_pb2 as pb
from parlance.generator.v1 import generator_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "services" / "trainer" / "src"))
from parlance.trainer.parity import agreement

BASE = "base"
CPU_BASE = "base-llamacpp"
PROMPTS = (
    "What is the capital of France?",
    "Name three colours.",
    "Write a haiku about the sea.",
    "How do I boil an egg?",
    "Give me one tip for learning Python.",
    "What is 12 times 7?",
    "Say hello to Ada.",
    "Why is the sky blue?",
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapter", type=Path, required=True, help="the adapter folder")
    parser.add_argument("--engine", choices=("vllm", "llamacpp"), default="vllm")
    parser.add_argument(
        "--model", help="vLLM: the base's HF folder or id; llama.cpp: a GGUF (default: SmolLM2)"
    )
    parser.add_argument("--id", help="the adapter's model id (default: the folder's name)")
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--max-lora-rank", type=int, default=16)
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.5)
    parser.add_argument("--concurrency", type=int, default=32, help="throughput: requests")
    parser.add_argument("--throughput-tokens", type=int, default=128)
    parser.add_argument("--parity-llamacpp", action="store_true")
    return parser.parse_args()


def models_config(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.engine == "vllm":
        base: dict[str, Any] = {
            "id": BASE,
            "engine": "vllm",
            "path": args.model or "HuggingFaceTB/SmolLM2-135M-Instruct",
            "settings": {
                "enable_lora": True,
                "max_lora_rank": args.max_lora_rank,
                "max_loras": 4,
                "max_model_len": args.max_model_len,
                "gpu_memory_utilization": args.gpu_memory_utilization,
            },
        }
    else:
        base = {"id": BASE, "engine": "llamacpp", "settings": {"n_ctx": args.max_model_len}}
        if args.model:
            base["path"] = args.model
    models = [base]
    if args.parity_llamacpp and args.engine == "vllm":
        models.append({"id": CPU_BASE, "engine": "llamacpp", "settings": {"n_ctx": 1024}})
    return models


def generate_request(prompt: str, model: str, **sampling: Any) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        model=model,
        chat=pb.ChatInput(messages=[pb.ChatMessage(role="user", content=prompt)]),
        sampling=pb.SamplingParams(**sampling),
    )


async def greedy(stub: Any, prompt: str, model: str, max_tokens: int) -> str:
    request = generate_request(prompt, model, max_tokens=max_tokens, temperature=0.0)
    return "".join([d.text async for r in stub.Generate(request) for d in r.choices])


async def answers(stub: Any, model: str, max_tokens: int) -> list[str]:
    return [await greedy(stub, p, model, max_tokens) for p in PROMPTS]


async def throughput(stub: Any, model: str, n: int, tokens: int) -> dict[str, float]:
    async def one(i: int) -> int:
        request = generate_request(
            PROMPTS[i % len(PROMPTS)], model, max_tokens=tokens, temperature=0.0, ignore_eos=True
        )
        return sum([d.token_count async for r in stub.Generate(request) for d in r.choices])

    await one(0)  # warm-up (the adapter's first use loads it into the GPU's LoRA slots)
    began = time.perf_counter()
    counts = await asyncio.gather(*(one(i) for i in range(n)))
    seconds = time.perf_counter() - began
    return {
        "requests": n,
        "output_tokens": sum(counts),
        "seconds": round(seconds, 3),
        "output_tok_s": round(sum(counts) / seconds, 1),
    }


async def check_unload(
    stub: Any, adapter_id: str, load: pb.LoadModelRequest, tokens: int
) -> dict[str, Any]:
    """Unloads the adapter while one of its requests runs: that request must finish with all
    its tokens (drain), then the adapter is gone, and the same folder loads again."""
    running = stub.Generate(
        generate_request(PROMPTS[2], adapter_id, max_tokens=tokens, ignore_eos=True)
    )
    first = await running.read()
    await stub.UnloadModel(pb.UnloadModelRequest(id=adapter_id))
    listed = [m.id for m in (await stub.ListModels(pb.ListModelsRequest())).models]
    generated = sum(d.token_count for d in first.choices)
    while (message := await running.read()) != grpc.aio.EOF:
        generated += sum(d.token_count for d in message.choices)
    try:
        await greedy(stub, PROMPTS[0], adapter_id, 4)
        code = "OK"
    except grpc.aio.AioRpcError as exc:
        code = exc.code().name
    reloaded = (await stub.LoadModel(load)).model
    return {
        "unlisted": adapter_id not in listed,
        "running_request_tokens": generated,
        "running_request_drained": generated == tokens,
        "request_after_unload": code,
        "reloaded_same_weights": reloaded.id == adapter_id,
    }


async def parity(stub: Any, args: argparse.Namespace, adapter_id: str) -> dict[str, Any]:
    cpu_id = f"{adapter_id}~llamacpp"
    load = pb.LoadModelRequest(
        id=cpu_id, task=pb.MODEL_TASK_CHAT, path=str(args.adapter.resolve()), parent=CPU_BASE
    )
    await stub.LoadModel(load)
    gpu = await answers(stub, adapter_id, args.max_tokens)
    cpu = await answers(stub, cpu_id, args.max_tokens)
    same = [a == b for a, b in zip(gpu, cpu, strict=True)]
    return {
        "identical": sum(same),
        "of": len(same),
        # Exact matches and the mean common prefix in words: parlance-train's measure.
        "words": agreement([a.split() for a in gpu], [b.split() for b in cpu]),
        "vllm": gpu,
        "llamacpp": cpu,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    adapter = args.adapter.resolve()
    adapter_id = args.id or adapter.name
    settings = GeneratorSettings(
        port=0,
        metrics_port=-1,
        shutdown_grace_s=1.0,
        models=json.dumps(models_config(args)),
        load_root=str(adapter.parent),
    )
    host, _ = create_host(settings)
    began = time.perf_counter()
    await host.start()
    result: dict[str, Any] = {
        "engine": args.engine,
        "adapter": str(adapter),
        "id": adapter_id,
        "start_s": round(time.perf_counter() - began, 1),
    }
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port}") as channel:
            stub = generator_pb2_grpc.GeneratorServiceStub(channel)
            result.update(await checks(stub, args, adapter, adapter_id))
    finally:
        await host.stop()
    return result


async def checks(
    stub: Any, args: argparse.Namespace, adapter: Path, adapter_id: str
) -> dict[str, Any]:
    load = pb.LoadModelRequest(
        id=adapter_id, task=pb.MODEL_TASK_CHAT, path=str(adapter), parent=BASE
    )
    began = time.perf_counter()
    info = (await stub.LoadModel(load)).model
    load_s = round(time.perf_counter() - began, 2)
    listed = {m.id: m.parent for m in (await stub.ListModels(pb.ListModelsRequest())).models}
    base = await answers(stub, BASE, args.max_tokens)
    adapted = await answers(stub, adapter_id, args.max_tokens)
    base_again = await answers(stub, BASE, args.max_tokens)
    adapted_again = await answers(stub, adapter_id, args.max_tokens)
    mixed = [(p, m) for p in PROMPTS for m in (BASE, adapter_id)]
    together = await asyncio.gather(*(greedy(stub, p, m, args.max_tokens) for p, m in mixed))
    alone = dict(zip([(p, BASE) for p in PROMPTS], base, strict=True)) | dict(
        zip([(p, adapter_id) for p in PROMPTS], adapted, strict=True)
    )
    differ = [a != b for a, b in zip(adapted, base, strict=True)]
    result: dict[str, Any] = {
        "load_s": load_s,
        "listed_parent": listed.get(adapter_id),
        "info": {
            "id": info.id,
            "parent": info.parent,
            "engine": info.engine,
            "max_model_len": info.max_model_len,
        },
        "prompts": list(PROMPTS),
        "base": base,
        "adapter": adapted,
        "differ": differ,
        "differ_count": sum(differ),
        "base_unchanged_after_adapter": base_again == base,
        "adapter_repeatable": adapted_again == adapted,
        "concurrent_match_alone": list(together) == [alone[c] for c in mixed],
    }
    base_tp = await throughput(stub, BASE, args.concurrency, args.throughput_tokens)
    lora_tp = await throughput(stub, adapter_id, args.concurrency, args.throughput_tokens)
    result["throughput"] = {
        "base": base_tp,
        "adapter": lora_tp,
        "adapter_over_base": round(lora_tp["output_tok_s"] / base_tp["output_tok_s"], 3),
    }
    if args.parity_llamacpp and args.engine == "vllm":
        result["parity_llamacpp"] = await parity(stub, args, adapter_id)
    result["unload"] = await check_unload(stub, adapter_id, load, args.throughput_tokens)
    return result


def passed(result: dict[str, Any]) -> dict[str, bool]:
    unload = result["unload"]
    return {
        "listed with its parent": result["listed_parent"] == BASE,
        "answers differ from the base": result["differ_count"] > 0,
        "base unchanged after adapter requests": result["base_unchanged_after_adapter"],
        "adapter repeatable": result["adapter_repeatable"],
        "concurrent answers match": result["concurrent_match_alone"],
        "unloaded while running: drained, unlisted, NOT_FOUND, reloadable": unload["unlisted"]
        and unload["running_request_drained"]
        and unload["request_after_unload"] == "NOT_FOUND"
        and unload["reloaded_same_weights"],
    }


def main() -> int:
    args = parse_args()
    result = asyncio.run(run(args))
    verdicts = passed(result)
    result["checks"] = verdicts
    result["ok"] = all(verdicts.values())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"adapter {result['id']} on {result['engine']} (loaded in {result['load_s']} s)")
    print(f"answers differ from the base on {result['differ_count']} of {len(PROMPTS)} prompts")
    for name, ok in verdicts.items():
        print(f"  {'PASS' if ok else 'FAIL'}  {name}")
    tp = result["throughput"]
    print(
        f"throughput ({tp['base']['requests']} concurrent, output tok/s): base "
        f"{tp['base']['output_tok_s']}, adapter {tp['adapter']['output_tok_s']} "
        f"(ratio {tp['adapter_over_base']})"
    )
    if "parity_llamacpp" in result:
        p = result["parity_llamacpp"]
        print(f"vLLM vs llama.cpp greedy (adapter): {p['identical']} of {p['of']} identical")
    print(f"wrote {args.out}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
