"""The route file: intents (name, example utterances, actions) and the default route, read
from YAML or JSON and checked, each problem named with the route and its line.

    embed_model: my-embedder  # the embedding model (GATEWAY_INTENT_EMBED_MODEL overrides it)
    threshold: 0.5          # best intent's score below this: the default route
    context_turns: 0        # previous user turns mixed into the query (0: newest only)
    context_weight: 0.5     # their weight beside the newest message
    method: nearest         # or centroid, or logistic (a classifier trained on the examples)
    k: 2                    # nearest: mean similarity of an intent's k closest examples
    center: true            # compare vectors after removing the examples' mean
    name_anchors: true      # each route's name is one more example ("small_talk": "small talk")
    reask_threshold: 0.75   # a message this similar to the previous user message re-asks it
    reask_embed_model: all-MiniLM-L6-v2   # ... measured with this model (unset: embed_model's)
    default:                # actions for messages that match nothing (name: "default")
      model: default
      examples: ["what's the capital of australia"]   # optional, 0-20: out of scope
    routes:
      - name: coding
        examples: ["why does my python loop never end", ...]   # 3-20
        model: default      # a model id or alias (checked against the routing table)
        system_prompt: "You are a careful programming assistant."
        sampling: {temperature: 0.2}
        safety: {violence: 0.2}   # stricter input thresholds (a route only tightens)
        store: true
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from parlance.gateway.intents.names import SAFETY_CATEGORIES, anchor

MIN_EXAMPLES = 3
MAX_EXAMPLES = 20
DEFAULT_ROUTE = "default"
_LINE = "__line__"


class RouteFileError(ValueError):
    """A route file that cannot be used; the message names the file, route and line."""


class Sampling(BaseModel):
    """Sampling defaults a route sets when the request leaves them out."""

    model_config = ConfigDict(extra="forbid")

    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)


class Actions(BaseModel):
    """What a route does to the request. Unset fields leave the request as it is."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(default=None, min_length=1)
    system_prompt: str | None = Field(default=None, min_length=1)
    sampling: Sampling = Field(default_factory=Sampling)
    safety: dict[str, float] = Field(default_factory=dict)
    store: bool | None = None

    @field_validator("safety")
    @classmethod
    def _known_categories(cls, value: dict[str, float]) -> dict[str, float]:
        for category, threshold in value.items():
            if category not in SAFETY_CATEGORIES:
                raise ValueError(
                    f"unknown safety category {category!r}; known: "
                    + ", ".join(sorted(SAFETY_CATEGORIES))
                )
            if not 0.0 <= threshold <= 1.0:
                raise ValueError(f"safety threshold of {category!r} must be in [0, 1]")
        return value


def _clean_examples(value: list[str]) -> list[str]:
    cleaned = [e.strip() for e in value]
    if any(not e for e in cleaned):
        raise ValueError("an example is empty")
    if len(set(cleaned)) != len(cleaned):
        raise ValueError("an example is listed twice")
    return cleaned


class Route(Actions):
    # Starts with a letter or digit: history stores it as a message's intent token.
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    examples: list[str] = Field(min_length=MIN_EXAMPLES, max_length=MAX_EXAMPLES)

    @field_validator("examples")
    @classmethod
    def _real_examples(cls, value: list[str]) -> list[str]:
        return _clean_examples(value)


class DefaultRoute(Actions):
    """The default route's actions, and optional examples of out-of-scope messages (one
    closer to them than to every intent takes the default route whatever its score)."""

    examples: list[str] = Field(default_factory=list, max_length=MAX_EXAMPLES)

    @field_validator("examples")
    @classmethod
    def _real_examples(cls, value: list[str]) -> list[str]:
        return _clean_examples(value)


class RouteFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = 1
    # The embedding model the examples and messages are embedded with (the threshold and the
    # method were measured with it): a model id or alias the generators serve for task
    # "embed". GATEWAY_INTENT_EMBED_MODEL, when set, overrides it; neither: the first
    # embedding model the generators list. A reload cannot change it (a restart does).
    embed_model: str | None = Field(default=None, min_length=1)
    threshold: float = Field(default=0.5, ge=-1, le=1)
    # nearest: an intent's score is the similarity of its closest example(s) (see k);
    # centroid: the similarity to the mean of its examples; logistic: its probability under a
    # softmax regression trained on every example when the file is loaded (the default
    # route's examples are one more class; threshold: the least probability to take a route).
    method: Literal["nearest", "centroid", "logistic"] = "nearest"
    # nearest: the mean similarity of an intent's k closest examples (1: the closest alone).
    k: int = Field(default=1, ge=1, le=MAX_EXAMPLES)
    context_turns: int = Field(default=0, ge=0, le=8)
    context_weight: float = Field(default=0.5, ge=0, le=1)
    # Similarities after subtracting the mean of every example vector (the direction all
    # chat messages share), re-normalised: scores spread more between intents.
    center: bool = False
    # Each route's name, its _ . - as spaces, is one more example of it (a label anchor).
    name_anchors: bool = False
    # A stored user message this similar (cosine) to the previous one of its conversation
    # re-asks it: a weak negative on the answer between them (intents/reask.py); unset: none.
    reask_threshold: float | None = Field(default=None, ge=0, le=1)
    # The embedding model that similarity is measured with; unset: the routing model. An
    # intent model fine-tuned to put every message of one task together (the shipped one)
    # makes a follow-up as close as a re-ask: a plain sentence encoder tells them apart.
    reask_embed_model: str | None = Field(default=None, min_length=1)
    default: DefaultRoute = Field(default_factory=DefaultRoute)
    routes: list[Route] = Field(min_length=1)


@dataclass(frozen=True)
class LoadedRoutes:
    """A checked route file and where each route was written (for later errors)."""

    path: str
    spec: RouteFile
    lines: dict[str, int] = field(default_factory=dict)

    def where(self, name: str) -> str:
        line = self.lines.get(name)
        return f"{self.path}, route {name!r}" + (f" (line {line})" if line else "")


class _LineLoader(yaml.SafeLoader):
    """A safe loader that notes each mapping's first line under __line__ (removed again
    before validation), so that errors can point into the file."""


def _mapping_with_line(loader: _LineLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    mapping = loader.construct_mapping(node, deep=True)
    mapping[_LINE] = node.start_mark.line + 1
    return mapping


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_with_line)


def _parse(path: str, text: str) -> Any:
    if path.endswith(".json"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise RouteFileError(
                f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}"
            ) from None
    try:
        return yaml.load(text, Loader=_LineLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise RouteFileError(f"{path}: not valid YAML{where}: {problem}") from None


def _strip_lines(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_lines(v) for k, v in value.items() if k != _LINE}
    if isinstance(value, list):
        return [_strip_lines(v) for v in value]
    return value


def _route_lines(raw: dict[str, Any]) -> list[int | None]:
    routes = raw.get("routes")
    if not isinstance(routes, list):
        return []
    return [r.get(_LINE) if isinstance(r, dict) else None for r in routes]


def _describe(path: str, raw: dict[str, Any], exc: ValidationError) -> str:
    lines = _route_lines(raw)
    problems = []
    for error in exc.errors():
        loc = list(error["loc"])
        where = ".".join(str(p) for p in loc) or "(top level)"
        if len(loc) >= 2 and loc[0] == "routes" and isinstance(loc[1], int):
            index = loc[1]
            route = raw["routes"][index]
            name = route.get("name") if isinstance(route, dict) else None
            line = lines[index] if index < len(lines) else None
            label = f"route {name!r}" if name else f"route #{index + 1}"
            field_name = ".".join(str(p) for p in loc[2:]) or "(the route)"
            where = f"{label}" + (f" (line {line})" if line else "") + f", {field_name}"
        problems.append(f"{where}: {error['msg']}")
    return f"{path}: " + "; ".join(problems)


def parse_routes(text: str, path: str = "<routes>") -> LoadedRoutes:
    """The checked route file from its text. RouteFileError names every problem found."""
    raw = _parse(path, text)
    if not isinstance(raw, dict):
        raise RouteFileError(
            f"{path}: the route file must be a mapping with a 'routes' list, not "
            f"{type(raw).__name__}"
        )
    try:
        spec = RouteFile.model_validate(_strip_lines(raw))
    except ValidationError as exc:
        raise RouteFileError(_describe(path, raw, exc)) from None
    lines = {}
    seen: set[str] = set()
    for route, line in zip(spec.routes, _route_lines(raw), strict=True):
        at = f" (line {line})" if line else ""
        if route.name in seen:
            raise RouteFileError(f"{path}: route name {route.name!r}{at} is used twice")
        if route.name == DEFAULT_ROUTE:
            raise RouteFileError(
                f"{path}: route name {DEFAULT_ROUTE!r}{at} is reserved for the default route "
                "(configure it under 'default:')"
            )
        seen.add(route.name)
        if line:
            lines[route.name] = line
    _check_shared_examples(path, spec)
    _check_logistic_threshold(path, spec)
    return LoadedRoutes(path=path, spec=spec, lines=lines)


def _check_shared_examples(path: str, spec: RouteFile) -> None:
    """One utterance under two intents makes both ambiguous: refused. With name_anchors a
    route's name anchor is one of its examples (intents/index.py trains on it)."""
    owner: dict[str, str] = {}
    named = [(r.name, [anchor(r.name)] * spec.name_anchors + r.examples) for r in spec.routes]
    note = " (name_anchors: a route's name is one of its examples)" if spec.name_anchors else ""
    for name, examples in [*named, (DEFAULT_ROUTE, spec.default.examples)]:
        for example in examples:
            key = example.casefold()
            if key in owner and owner[key] != name:
                raise RouteFileError(
                    f"{path}: example {example!r} is listed under both {owner[key]!r} and "
                    f"{name!r}{note}"
                )
            owner[key] = name


def _check_logistic_threshold(path: str, spec: RouteFile) -> None:
    """Logistic, no default examples (their own class), threshold <= 1/N: never a fallback."""
    floor = 1.0 / len(spec.routes)
    if spec.method == "logistic" and not spec.default.examples and spec.threshold <= floor:
        raise RouteFileError(
            f"{path}: with method 'logistic' and no default examples, threshold "
            f"{spec.threshold} never falls back (the best of {len(spec.routes)} probabilities "
            f"is at least {floor:.3g}): raise it above {floor:.3g} or add default examples"
        )


def load_routes(path: str | Path) -> LoadedRoutes:
    """Read and check a route file (RouteFileError when it is missing or wrong)."""
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise RouteFileError(f"{name}: cannot read the route file: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise RouteFileError(f"{name}: the route file is not UTF-8 text") from None
    return parse_routes(text, name)
