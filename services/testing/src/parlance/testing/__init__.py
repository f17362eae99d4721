"""parlance.testing: test support written once for every suite (tests/ and services/*/tests).

- keys: MODEL, the tests' API keys, bearer headers
- processes: free_port, the stack as processes (scripts/devstack.py), extra gateways, Redis
- stacks: StackPool, stacks shared by settings between modules
- sse: SSE on httpx-sse, one streamed answer as a client saw it
- chat: the chat request helper
- scripted: settings of the generator's scripted test engine
- postgres: a fresh PostgreSQL database (fails, never skips, without a server)
- waiting: wait_until; metrics: scrape and total
- reward_model: one `parlance-train reward` run per session (the reward_training fixture)
- dpo_adapter: one `parlance-train dpo` run per session (the dpo_adapter fixture)
- plugin: the pytest fixtures (loaded everywhere through the pytest11 entry point)
G1's gateway fakes and in-process client live in fakes.py and inprocess.py; fake_targets.py
holds generator targets that load models and the admin model tests' helpers; history_server.py
a real history service in the test's process (the outbox tests).
"""

from parlance.testing.chat import assert_openai_error, base_url, chat, chat_body
from parlance.testing.keys import (
    ALICE,
    ALICE_KEY,
    BOB,
    BOB_KEY,
    KEY_ID_SECRET,
    MODEL,
    bearer,
    static_key_id,
)
from parlance.testing.metrics import scrape, total
from parlance.testing.processes import (
    RedisProcess,
    ServiceProcess,
    Stack,
    free_port,
    gateway_url,
    redis_answers,
    start_extra_gateway,
    start_redis_server,
    start_stack,
)
from parlance.testing.scripted import scripted_generator
from parlance.testing.sse import (
    DONE,
    StreamResult,
    aiter_events,
    iter_data,
    iter_events,
    read_events,
    stream_chat,
    text_of,
)
from parlance.testing.stacks import StackPool
from parlance.testing.waiting import wait_until

__all__ = [
    "ALICE",
    "ALICE_KEY",
    "BOB",
    "BOB_KEY",
    "DONE",
    "KEY_ID_SECRET",
    "MODEL",
    "RedisProcess",
    "ServiceProcess",
    "Stack",
    "StackPool",
    "StreamResult",
    "aiter_events",
    "assert_openai_error",
    "base_url",
    "bearer",
    "chat",
    "chat_body",
    "free_port",
    "gateway_url",
    "iter_data",
    "iter_events",
    "read_events",
    "redis_answers",
    "scrape",
    "scripted_generator",
    "start_extra_gateway",
    "start_redis_server",
    "start_stack",
    "static_key_id",
    "stream_chat",
    "text_of",
    "total",
    "wait_until",
]
