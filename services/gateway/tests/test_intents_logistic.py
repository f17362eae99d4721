"""The route file's `logistic` method: a softmax regression trained on the examples' vectors
when the file is loaded. Its solver against scikit-learn's, and the shipped route file over
the gateway's intent model, the one the file names (all-MiniLM-L6-v2 with the fine-tuned intent
deltas merged, every layer pooled, dtype auto: as `make up` serves it) on a real generator gRPC
server, through the gateway's own client and registry."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
from sklearn.linear_model import LogisticRegression

from parlance.common.grpc_server import GrpcServiceHost
from parlance.gateway.clients import GeneratorClient
from parlance.gateway.intents import GeneratorEmbedder, IntentRouter, load_routes
from parlance.gateway.intents.index import REGULARISATION_C, softmax_regression
from parlance.gateway.models import ModelRegistry
from parlance.generator.config import GeneratorSettings
from parlance.generator.main import create_host

pytestmark = pytest.mark.asyncio(loop_scope="module")

INTENT_MODEL = "all-MiniLM-L6-v2-intents-3"
MODELS = [
    {"id": "scripted-chat", "engine": "scripted", "settings": {"scripted_tokens_per_s": 0}},
    {
        "id": INTENT_MODEL,
        "engine": "transformers",
        "task": "embed",
        "settings": {
            "embed_deltas": "minilm_intents_3.npz",
            "embed_dtype": "float32",
            "embed_pooling": "layers",
            "embed_max_wait_ms": 0,
        },
    },
]
SHIPPED = Path(__file__).parents[1] / "src/parlance/gateway/intents/default_routes.yaml"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def client() -> AsyncIterator[GeneratorClient]:
    settings = GeneratorSettings(
        port=0, metrics_port=-1, shutdown_grace_s=1.0, models=json.dumps(MODELS)
    )
    host: GrpcServiceHost
    host, _ = create_host(settings)
    await host.start()
    generator = GeneratorClient(f"127.0.0.1:{host.port}", timeout_s=30.0, retry_after_s=1)
    await generator.wait_listed(30.0)
    yield generator
    await generator.close()
    await host.stop()


async def router_for(client: GeneratorClient, path: Path) -> IntentRouter:
    registry = ModelRegistry(client)
    # The model the shipped file names (the gateway's load_router picks it the same way).
    assert load_routes(SHIPPED).spec.embed_model == INTENT_MODEL
    embedder = GeneratorEmbedder(client, registry.resolve, INTENT_MODEL)
    return await IntentRouter.load(str(path), embedder)


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


async def test_the_solver_agrees_with_scikit_learn() -> None:
    # Four classes of unit vectors in 64 dimensions, fewer examples than dimensions (as a
    # route file's), and held-out points drawn around the same centres.
    rng = np.random.default_rng(7)
    centres = rng.normal(size=(4, 64))
    owners = np.repeat(np.arange(4), 6)
    rows = centres[owners] + 1.5 * rng.normal(size=(24, 64))
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    held_out = centres[np.repeat(np.arange(4), 50)] + 1.5 * rng.normal(size=(200, 64))
    held_out /= np.linalg.norm(held_out, axis=1, keepdims=True)
    weights, bias = softmax_regression(rows, owners, 4)
    reference = LogisticRegression(C=REGULARISATION_C, max_iter=5000).fit(rows, owners)
    mine = (held_out @ weights + bias).argmax(axis=1)
    assert np.mean(mine == reference.predict(held_out)) >= 0.99
    # The examples themselves are fitted, and the held-out points mostly right.
    assert np.all((rows @ weights + bias).argmax(axis=1) == owners)
    assert np.mean(mine == np.repeat(np.arange(4), 50)) > 0.8


async def test_the_shipped_file_routes_by_meaning(client: GeneratorClient) -> None:
    router = await router_for(client, SHIPPED)
    assert router.routes.spec.method == "logistic"
    expected = {
        "my java build fails with NoClassDefFoundError at startup": "coding",
        "what is the integral of 2x from 0 to 3": "math",
        "translate 'see you tomorrow' into italian": "translation",
        "I want a refund, my card was charged for a plan I cancelled": "support",
        "I have a sore throat and a fever since yesterday": "health",
        "what's the best time of year to visit lisbon": "default",
    }
    for text, intent in expected.items():
        match = await router.classify(user(text))
        assert match.name == intent, (text, match)
        # A probability: the best intent's, and its lead over the second.
        assert 0.0 < match.score <= 1.0 and 0.0 <= match.margin <= match.score
    assert router.embedder.model == INTENT_MODEL  # type: ignore[attr-defined]


async def test_a_probability_below_the_threshold_falls_back(
    client: GeneratorClient, tmp_path: Path
) -> None:
    text = SHIPPED.read_text()
    strict = tmp_path / "strict.yaml"
    strict.write_text(text.replace("\nthreshold: 0.15\n", "\nthreshold: 0.999\n"))
    assert strict.read_text() != text
    match = await (await router_for(client, strict)).classify(user("solve 2x + 3 = 11"))
    assert (match.name, match.fallback, match.nearest) == ("default", True, "math")
