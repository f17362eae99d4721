"""Intent routing (issue 18): a route file of intents with example utterances and actions,
the newest user message classified by the embedding model, the route's actions applied."""

from parlance.gateway.intents.apply import apply_actions
from parlance.gateway.intents.embedder import CachedEmbedder, GeneratorEmbedder
from parlance.gateway.intents.reask import PreviousTurn, ReaskSignal, previous_turn
from parlance.gateway.intents.router import (
    SERVER_TIMING_STAGE,
    Embedder,
    IntentMatch,
    IntentRouter,
)
from parlance.gateway.intents.routes import (
    DEFAULT_ROUTE,
    Actions,
    LoadedRoutes,
    Route,
    RouteFile,
    RouteFileError,
    load_routes,
    parse_routes,
)

__all__ = [
    "DEFAULT_ROUTE",
    "SERVER_TIMING_STAGE",
    "Actions",
    "CachedEmbedder",
    "Embedder",
    "GeneratorEmbedder",
    "IntentMatch",
    "IntentRouter",
    "LoadedRoutes",
    "PreviousTurn",
    "ReaskSignal",
    "Route",
    "RouteFile",
    "RouteFileError",
    "apply_actions",
    "load_routes",
    "parse_routes",
    "previous_turn",
]
