"""The reward loop learns (issue 16), through the real stack and the real chat model (SmolLM2
through llama.cpp): simulated users compare answers, a reward model is trained on their picks
and registered, and best_of then gives them what they prefer markedly more often.

The users' hidden preference: an answer that gladly takes the request on ("Sure, ...", "Of
course! ...", "Absolutely, I'd be happy to ...", "I'm more than happy to ...") beats one that
opens with an apology, a disclaimer or a tangent ("I'm sorry for any confusion, but ...", "As
an AI ..."). SmolLM2 at temperature 1 (top_p 0.95, top_k 40, min_p 0.05) opens either way
about half the time for requests phrased as asks for help, and the opening is decided in its
first tokens, so 6-token answers carry it.

The steps are the product's, each through its API:
1. comparisons: `parlance: {compare: "always"}` (two answers, stored as siblings); the user
   picks with POST /v1/conversations/{id}/comparisons when exactly one answer has the trait
   (no clear preference: the user skips, as users skip);
2. `parlance-train reward --from-gateway` (the admin export's preference pairs, all-MiniLM-L6-v2
   on CPU, bounded steps);
3. POST /v1/admin/models registers the folder (no restart); the card it returns has the
   held-out pairwise accuracy;
4. on fresh prompts (topics never compared), best_of=4 against plain answers (best_of=1) to
   the same prompts.

It runs in CI by default (about 2 minutes on an idle 2-core machine; README, Tests, has the
measured times and how often it fails by chance). PARLANCE_LOOP_TEST=0 skips it. Sizes
(LOOP_PROMPTS, LOOP_FRESH, LOOP_STEPS in the environment; the defaults are CI's) and the
figures are printed.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from parlance.testing import ALICE_KEY, Stack, StackPool, bearer
from parlance.testing.processes import RedisProcess

ADMIN_KEY = "sk-admin-reward-loop-0123456789"
# The opening is decided in the first tokens ("Of course! I'd be", "I'm sorry for any").
MAX_TOKENS = 6
BEST_OF = 4
# Plain answers per fresh prompt (one request with n=2): the baseline costs half of what
# best_of does and is twice as large as one answer per prompt would make it.
PLAIN_ANSWERS = 2
# Sampling as chat clients commonly set it (llama.cpp's defaults): temperature 1 with the
# unlikely tail cut, so that the answers are SmolLM2's own openings rather than noise.
SAMPLING: dict[str, Any] = {"temperature": 1.0, "top_p": 0.95, "top_k": 40, "min_p": 0.05}
# What the simulated users like: an opening that gladly takes the request on.
HELPFUL_OPENING = re.compile(
    r"^\W*((hello|hi|hey|oh|ah|aww|awesome|great|wonderful)\W+)?"
    r"(sure|of course|absolutely|certainly|definitely|yes|delighted|happy to|glad to|"
    r"i'?d (be )?((more than|really|so|very) )?(happy|glad|delighted|love|thrilled)|"
    r"i'?m ((more than|always|so|really|very) )?(happy|glad|delighted|thrilled|excited))\b",
    re.IGNORECASE,
)
ASKS = [
    "Can you help me with {t}?",
    "Could you give me some advice on {t}?",
    "Would you help me plan {t}?",
    "Can you give me a tip for {t}?",
]
TOPICS = """sourdough bread|a vegetable garden|a home network|a job interview|a road trip|
a marathon|a small aquarium|a wedding toast|a python project|a chess opening|a compost bin|
a first apartment|a camping weekend|a book club|a bicycle repair|a houseplant|a budget|
a podcast|a birthday party|a watercolor painting|a language course|a team meeting|
a science fair project|a photo album|a kitchen renovation|a morning routine|a study plan|
a board game night|a winter coat|a moving day|a blog|a rainy holiday|a bird feeder|
a guitar lesson|a resume|a picnic|a yoga practice|a used car|a fish tank filter|a puppy|
a dinner party|a garage sale|a hiking trip|a knitting project|a school lunch|a tax return|
a running shoe|a tree house|a baby shower|a flower bed|a sales pitch|a family reunion|
a website|a poetry reading|a piano recital|a science essay|a bake sale|a snow day|
a home office|a charity run|a craft fair|a fishing trip|a cover letter|a spring cleaning|
a road bike|a herb garden|a karaoke night|a museum visit""".replace("\n", "").split("|")
# Topics no comparison was about: the fresh prompts of the final check.
FRESH_TOPICS = """a pottery class|a beach holiday|a salary talk|a camping stove|a reading list|
a bathroom repair|a dog walk|a city break|a chemistry exam|a coffee machine|a retirement party|
a vegetable soup|a lighthouse tour|a sewing machine|a museum tour|a balcony garden|a tennis match|
a bread maker|a farmers market|a wedding speech|a garden shed|a movie night|a spice rack|
a ski trip|a stamp collection""".replace("\n", "").split("|")


def prefers(text: str) -> bool:
    return bool(HELPFUL_OPENING.search(text))


def _size(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


@dataclass
class Tally:
    started: float = field(default_factory=time.perf_counter)
    comparisons: int = 0
    answered: int = 0
    both: int = 0
    neither: int = 0
    flagged: int = 0
    refused: int = 0
    answers_with_trait: int = 0


@dataclass
class LoopStack:
    stack: Stack
    # The generator's GENERATOR_LOAD_ROOT: the trainer writes there, the registry loads from it.
    models: Path


@pytest.fixture(scope="module")
def loop_stack(
    stacks: StackPool, tmp_path_factory: pytest.TempPathFactory, redis_process: RedisProcess
) -> Iterator[LoopStack]:
    models = tmp_path_factory.mktemp("reward-models")
    stack = stacks.start(
        "reward-loop",
        # No conversation titles: each would be one more generation per comparison.
        gateway_env={
            "GATEWAY_ADMIN_KEY": ADMIN_KEY,
            "GATEWAY_MAX_BEST_OF": "4",
            "GATEWAY_GENERATE_TITLES": "false",
            # The export re-checks every text with safety: on a loaded 2-core machine that
            # takes longer than the default 5 s deadline.
            "GATEWAY_SAFETY_TIMEOUT_S": "60",
        },
        env={
            "generator": {
                "GENERATOR_LOAD_ROOT": str(models),
                # Two llama.cpp contexts of one thread each serve two requests at once on two
                # cores. llama.cpp's default (every core for one context) spins its threads
                # against each other and everything else on a busy machine: a 6-token answer
                # took 0.6-8.6 s that way at load 9 against ~0.2 s like this (README, Tests).
                "GENERATOR_N_THREADS": "1",
                "GENERATOR_POOL_SIZE": "2",
            }
        },
        share=False,
        # A Redis of its own: the registered reward model lives in Redis and would be
        # re-applied to, and listed by, later modules' stacks in the session's shared one.
        redis_url=redis_process.url,
    )
    yield LoopStack(stack, models)
    stack.stop()


def _chat_body(prompt: str, **fields: Any) -> dict[str, Any]:
    return {
        "model": "default",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": MAX_TOKENS,
        **SAMPLING,
        **fields,
    }


def _refused(response: httpx.Response) -> bool:
    """Input moderation refused the question (a classifier's false positive on a harmless
    ask, seen with the embedded classifiers): that user gets no answer to compare."""
    return response.status_code == 400 and response.json()["error"]["code"] == "content_filter"


async def _compare(client: httpx.AsyncClient, prompt: str, tally: Tally) -> None:
    """One conversation: two answers, and the simulated user's pick (or none)."""
    response = await client.post(
        "/v1/chat/completions",
        json=_chat_body(prompt, store=True, parlance={"compare": "always"}),
    )
    if _refused(response):
        tally.refused += 1
        return
    assert response.status_code == 200, response.text
    body = response.json()
    tally.comparisons += 1
    if any(c["finish_reason"] == "content_filter" for c in body["choices"]):
        # A flagged candidate is never offered (nor stored): no comparison to answer, and
        # the response names none.
        assert "comparison" not in body.get("parlance", {}), body
        tally.flagged += 1
        return
    ids = body["parlance"]["comparison"]["message_ids"]
    liked = [prefers(c["message"]["content"]) for c in body["choices"]]
    tally.answers_with_trait += sum(liked)
    if liked[0] == liked[1]:
        tally.both += all(liked)
        tally.neither += not any(liked)
        return
    chosen = liked.index(True)
    pick = {"chosen_message_id": ids[chosen], "rejected_message_id": ids[1 - chosen]}
    path = f"/v1/conversations/{body['conversation_id']}/comparisons"
    for _ in range(30):
        picked = await client.post(path, json=pick)
        # On a loaded machine history may take the exchange from the gateway's outbox a
        # moment after the answer (a direct write that timed out): a user reads first anyway.
        if picked.status_code != 404:
            break
        await asyncio.sleep(1.0)
    assert picked.status_code == 200, picked.text
    tally.answered += 1


async def _run_all(url: str, calls: list[Any], concurrency: int = 3) -> list[Any]:
    """Runs `calls` (coroutine functions of a client) a few at a time: the generator works
    one request at a time, the gateway's own work overlaps it."""
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(
        base_url=url, headers=bearer(ALICE_KEY), timeout=httpx.Timeout(600.0)
    ) as client:

        async def one(call: Any) -> Any:
            async with gate:
                return await call(client)

        return await asyncio.gather(*(one(c) for c in calls))


def _train(url: str, out: Path, steps: int) -> Path:
    command = [
        str(Path(sys.executable).with_name("parlance-train")),
        "reward", "--from-gateway", url, "--out", str(out), "--name", "reward-helpful",
        "--max-steps", str(steps), "--batch-size", "16",
        "--max-length", "64", "--seed", "0", "--eval-fraction", "0.25",
        # One torch thread: two spin against the generator's and the gateway's work on two
        # cores (16 steps took 107 s with 2 threads against 30 s with 1 at load 12).
        "--threads", "1",
    ]  # fmt: skip
    env = dict(os.environ, GATEWAY_ADMIN_KEY=ADMIN_KEY, HF_HUB_OFFLINE="1")
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return Path(done.stdout.strip().splitlines()[-1])


Answer = tuple[list[bool], Any] | None


async def _fresh_answers(url: str, prompts: list[str]) -> tuple[list[Answer], list[Answer]]:
    """Each prompt answered through the OpenAI SDK twice: once with best_of=4 in extra_body,
    and once plainly with n=PLAIN_ANSWERS (each choice an answer of its own, as a best_of=1
    request would give). Per request: whether each answer has the trait, and the parlance
    extension object; None where input moderation refused the question (see _refused)."""
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=ALICE_KEY, max_retries=0)
    gate = asyncio.Semaphore(3)

    async def one(prompt: str, fields: dict[str, Any]) -> Answer:
        async with gate:
            try:
                answer = await client.chat.completions.create(
                    model="default",
                    messages=[{"role": "user", "content": prompt}],
                    max_tokens=MAX_TOKENS,
                    temperature=SAMPLING["temperature"],
                    top_p=SAMPLING["top_p"],
                    extra_body={"top_k": SAMPLING["top_k"], "min_p": SAMPLING["min_p"], **fields},
                    timeout=600,
                )
            except openai.BadRequestError as exc:
                if exc.code == "content_filter":
                    return None
                raise
        hits = [prefers(c.message.content or "") for c in answer.choices]
        return hits, (answer.model_extra or {}).get("parlance")

    async with client:
        # Both arms in one go: the generator's two contexts stay busy.
        best = [one(p, {"best_of": BEST_OF}) for p in prompts]
        plain = [one(p, {"n": PLAIN_ANSWERS}) for p in prompts]
        answers = await asyncio.gather(*best, *plain)
    return answers[: len(prompts)], answers[len(prompts) :]


def per_prompt_exact_greater(prompts: list[tuple[int, int, int, int]]) -> float:
    """One-sided exact test of best_of against plain answers, compared prompt by prompt (the
    exact conditional test of a common odds ratio of 1 over strata, Mantel-Haenszel's setting).
    Each entry is one prompt's (best_of hits, best_of answers, plain hits, plain answers).

    The null hypothesis: on each prompt, best_of's answers have the trait as often as the
    plain ones; prompts may differ in how often that is (some asks draw a glad opening nearly
    always, some rarely). Given a prompt's hits in all, which of its answers hold them is then
    a draw without replacement: best_of's share is hypergeometric, the prompts independent. The
    p-value is the chance of best_of's hits (summed over prompts) at least as many as seen. A
    prompt whose answers all agree carries no evidence either way."""
    null = [1.0]  # the chance of each sum of best_of's hits, were the hypothesis true
    seen = 0
    for hits, answers, plain_hits, plain_answers in prompts:
        together = hits + plain_hits
        seen += hits
        ways = math.comb(answers + plain_answers, together)
        # The chance that x of the prompt's hits are best_of's.
        share = [
            math.comb(answers, x) * math.comb(plain_answers, together - x) / ways
            if x <= together
            else 0.0
            for x in range(answers + 1)
        ]
        null = [
            sum(null[k - x] * share[x] for x in range(len(share)) if 0 <= k - x < len(null))
            for k in range(len(null) + answers)
        ]
    return min(1.0, sum(null[seen:]))


def test_the_statistic_compares_answers_within_prompts() -> None:
    """per_prompt_exact_greater is the exact chance, given each prompt's hits, that best_of's
    share of them is at least the one seen (every placement of a prompt's hits among its
    answers counted, equally likely); prompts whose answers all agree change nothing."""
    prompts = [(1, 1, 0, 2), (1, 1, 1, 2), (0, 1, 1, 2), (1, 1, 0, 2), (0, 1, 2, 2), (1, 1, 1, 2)]
    seen = sum(p[0] for p in prompts)
    placements = itertools.product(
        *(itertools.combinations(range(b + p), hits + ph) for hits, b, ph, p in prompts)
    )
    as_many = total = 0
    for placement in placements:
        # Answers 0 .. best_of answers - 1 of a prompt are best_of's.
        best = sum(
            sum(slot < prompt[1] for slot in chosen)
            for chosen, prompt in zip(placement, prompts, strict=True)
        )
        as_many += best >= seen
        total += 1
    assert per_prompt_exact_greater(prompts) == pytest.approx(as_many / total, rel=1e-9)
    agreeing = [(1, 1, 2, 2)] * 30 + [(0, 1, 0, 2)] * 30
    assert per_prompt_exact_greater(prompts + agreeing) == pytest.approx(
        per_prompt_exact_greater(prompts), rel=1e-9
    )


def test_the_statistic_holds_its_level_whatever_the_prompts_rates() -> None:
    """Best_of no better than plain answers on prompts of very different rates: over every
    outcome of 5 prompts (one best_of and two plain answers each), p <= alpha comes with a
    chance of at most alpha."""
    rates = (0.05, 0.3, 0.5, 0.8, 0.95)
    outcomes = [
        [((b, 1, k, 2), r**b * (1 - r) ** (1 - b) * math.comb(2, k) * r**k * (1 - r) ** (2 - k))
         for b in (0, 1) for k in (0, 1, 2)]
        for r in rates
    ]  # fmt: skip
    runs = []
    for outcome in itertools.product(*outcomes):
        chance = math.prod(c for _, c in outcome)
        runs.append((per_prompt_exact_greater([o for o, _ in outcome]), chance))
    assert sum(c for _, c in runs) == pytest.approx(1.0)
    for alpha in (0.01, 0.05, 0.1, 0.25, 0.5):
        assert sum(c for p, c in runs if p <= alpha) <= alpha


# The loop's marks only: the statistic's tests above take milliseconds.
@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.skipif(
    os.environ.get("PARLANCE_LOOP_TEST") == "0", reason="PARLANCE_LOOP_TEST=0 skips it"
)
def test_best_of_learns_what_the_users_prefer(loop_stack: LoopStack) -> None:
    url = loop_stack.stack.gateway_url
    prompts = [ask.format(t=topic) for topic in TOPICS for ask in ASKS]
    prompts = prompts[: _size("LOOP_PROMPTS", 200)]
    timings: dict[str, float] = {}
    tally = Tally()

    # 1. Simulated users compare answers.
    calls = [lambda c, p=p: _compare(c, p, tally) for p in prompts]
    asyncio.run(_run_all(url, calls))
    timings["comparisons"] = time.perf_counter() - tally.started

    # 2. Train a reward model on the export.
    started = time.perf_counter()
    folder = _train(url, loop_stack.models, _size("LOOP_STEPS", 16))
    timings["training"] = time.perf_counter() - started

    # 3. Register it at run time; its card comes back.
    started = time.perf_counter()
    registered = httpx.post(
        f"{url}/v1/admin/models",
        json={"id": folder.name, "task": "reward", "path": str(folder)},
        headers=bearer(ADMIN_KEY),
        timeout=300,
    )
    assert registered.status_code == 201, registered.text
    card = registered.json()["card"] or json.loads((folder / "model_card.json").read_text())
    timings["registration"] = time.perf_counter() - started

    # 4. Fresh prompts: best_of=4 against plain answers to the same prompts.
    started = time.perf_counter()
    fresh = [ask.format(t=topic) for topic in FRESH_TOPICS for ask in ASKS]
    fresh = fresh[: _size("LOOP_FRESH", 100)]
    best_answers, plain_answers = asyncio.run(_fresh_answers(url, fresh))
    timings["best_of"] = time.perf_counter() - started
    # Prompts input moderation refused in either arm are left out of both.
    kept = [
        (b, p)
        for b, p in zip(best_answers, plain_answers, strict=True)
        if b is not None and p is not None
    ]
    answered = len(kept)
    best_hits = sum(sum(b[0]) for b, _ in kept)
    plain_hits = sum(sum(p[0]) for _, p in kept)
    n_plain = PLAIN_ANSWERS * answered
    p_value = per_prompt_exact_greater(
        [(sum(b[0]), len(b[0]), sum(p[0]), len(p[0])) for b, p in kept]
    )
    accuracy = card["eval"]["held_out_pairwise_accuracy"]

    print(
        f"\nreward loop: {tally.comparisons} comparisons, {tally.answered} answered "
        f"({tally.both} both / {tally.neither} neither liked, {tally.flagged} with a flagged "
        "candidate: skipped), "
        f"{tally.answers_with_trait} of {2 * (tally.comparisons - tally.flagged)} answers with "
        "the trait; "
        f"card: split {json.dumps(card['split'])}, training {json.dumps(card['training'])}, "
        f"held-out accuracy {accuracy:.3f}; "
        f"{tally.refused} questions refused by input moderation; fresh prompts: best_of=4 "
        f"{best_hits}/{answered} vs plain {plain_hits}/{n_plain} "
        f"({len(fresh) - answered} refused; one-sided per-prompt exact p = {p_value:.2e}); "
        f"seconds: {json.dumps({k: round(v, 1) for k, v in timings.items()})}"
    )
    assert {b[1]["best_of"]["reward_model"] for b, _ in kept} == {folder.name}
    assert accuracy >= 0.85
    # Markedly more often, and by a margin chance does not reach: were best_of's answers no
    # likelier to have the trait than the plain ones to the same prompt, however the prompts
    # differ, this many hits (or more) would come less than once in a thousand runs. With the
    # rates seen here a run misses this mark by chance about once in 10^5 or less (README,
    # Tests: bench/reward_loop_sim.py, simulated from per-prompt rates).
    assert best_hits * n_plain > plain_hits * answered
    assert p_value < 1e-3
