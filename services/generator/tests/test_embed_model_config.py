"""GENERATOR_MODELS: the list form (JSON or a file), the short form, and clear errors."""

from __future__ import annotations

import json

import pytest

from parlance.generator.models import ModelsConfigError, model_specs

CHAT = "scripted-chat"
EMBED = "all-MiniLM-L6-v2"
MODELS = [
    {"id": CHAT, "engine": "scripted", "settings": {"scripted_tokens_per_s": 0}},
    {"id": EMBED, "engine": "transformers", "task": "embed"},
]


def test_model_list_configuration(tmp_path, test_settings_factory) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "models.json"
    path.write_text(json.dumps(MODELS))
    specs = model_specs(test_settings_factory(models=str(path)))
    assert [(s.id, s.engine, s.task) for s in specs] == [
        (CHAT, "scripted", "chat"),
        (EMBED, "transformers", "embed"),
    ]
    short = model_specs(test_settings_factory(engine="transformers"))
    assert [(s.id, s.task) for s in short] == [("all-MiniLM-L6-v2", "embed")]
    bad = {
        "[]": "non-empty",
        "[{": "not valid JSON",
        "/no/such/file.json": "neither a JSON list nor a readable file",
        json.dumps([MODELS[0], MODELS[0]]): "more than once",
        json.dumps([{"id": "x", "engine": "llamacpp", "task": "embed"}]): "cannot serve task",
        json.dumps([{"id": "x", "engine": "vllm", "task": "embed"}]): "needs its HF id or folder",
        json.dumps([{"id": "x", "engine": "scripted", "settings": {"port": 1}}]): "per-model",
        json.dumps([{"id": "x", "engine": "gpt"}]): r"GENERATOR_MODELS\[0\]: engine",
    }
    for raw, message in bad.items():
        with pytest.raises(ModelsConfigError, match=message):
            model_specs(test_settings_factory(models=raw))


async def test_a_torch_device_this_host_lacks_is_a_clear_load_error() -> None:
    """torch_device places the transformers engines on a GPU; on a host whose torch cannot use
    it (this CPU build), loading fails with a message naming the device, not a traceback."""
    import torch

    from parlance.generator.engine.transformers_embed import TransformersEmbeddingEngine

    if torch.cuda.is_available():
        pytest.skip("this host has CUDA: the device exists")
    engine = TransformersEmbeddingEngine(served_model_name="m", device="cuda")
    with pytest.raises(ValueError, match="cannot place the model on 'cuda'"):
        await engine.start()
    await engine.close()
