"""gRPC clients of the generator, safety and history services.

Each call has a deadline; only idempotent calls are retried (by gRPC's own retry policy, with
backoff, on UNAVAILABLE). gRPC failures become OpenAI-shaped errors in one place (channel.py).

- channel.py: channels (keepalive, retry policy, round-robin), the error mapping, the base client
- generator.py: the client of one generator target
- pool.py: GeneratorClient, every generator target behind one client, routed by model id
- safety.py, history.py: the clients of the safety and history services
"""

from parlance.gateway.clients.channel import KeepAlive, make_channel, to_api_error
from parlance.gateway.clients.generator import GeneratorTargetClient
from parlance.gateway.clients.history import HistoryClient
from parlance.gateway.clients.pool import GeneratorClient
from parlance.gateway.clients.safety import SafetyClient
from parlance.gateway.clients.targets import parse_targets

__all__ = [
    "GeneratorClient",
    "GeneratorTargetClient",
    "HistoryClient",
    "KeepAlive",
    "SafetyClient",
    "make_channel",
    "parse_targets",
    "to_api_error",
]
