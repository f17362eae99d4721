"""The intent route file: the shipped example is valid, and every kind of bad file is refused
with an error that names the problem, the route and its line; route actions applied to a
request with the request's own choices first."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from parlance.gateway.intents import (
    Actions,
    RouteFileError,
    apply_actions,
    load_routes,
    parse_routes,
)
from parlance.gateway.intents.routes import MAX_EXAMPLES

SHIPPED = Path(__file__).resolve().parents[1] / "src/parlance/gateway/intents/default_routes.yaml"

GOOD = """\
threshold: 0.4
default:
  model: default
routes:
  - name: coding
    model: default
    system_prompt: Be precise.
    sampling: {temperature: 0.2}
    safety: {violence: 0.9}
    store: true
    examples:
      - why does my loop never end
      - how do I sort a list in python
      - fix this null pointer exception
  - name: cooking
    examples:
      - how long do I boil an egg
      - recipe for pancakes
      - what can I cook with rice and beans
"""


def refused(text: str, path: str = "routes.yaml") -> str:
    with pytest.raises(RouteFileError) as info:
        parse_routes(textwrap.dedent(text), path)
    return str(info.value)


def test_the_shipped_route_file_is_valid() -> None:
    routes = load_routes(SHIPPED)
    names = [r.name for r in routes.spec.routes]
    assert len(names) >= 6 and len(set(names)) == len(names)
    assert all(3 <= len(r.examples) <= MAX_EXAMPLES for r in routes.spec.routes)
    # Its threshold and method were measured with the fine-tuned intent encoder, which it names
    # (the generator serves it under this id in `make up`).
    assert routes.spec.embed_model == "all-MiniLM-L6-v2-intents-3"


def test_the_embedding_model_is_optional_but_not_empty() -> None:
    assert parse_routes(GOOD).spec.embed_model is None
    assert parse_routes("embed_model: my-embedder\n" + GOOD).spec.embed_model == "my-embedder"
    assert "embed_model" in refused("embed_model: ''\n" + GOOD)


def test_a_good_file_parses_with_its_actions_and_lines() -> None:
    routes = parse_routes(GOOD, "routes.yaml")
    coding, cooking = routes.spec.routes
    assert routes.spec.threshold == 0.4
    assert (coding.model, coding.system_prompt, coding.store) == ("default", "Be precise.", True)
    assert coding.sampling.temperature == 0.2 and coding.safety == {"violence": 0.9}
    assert cooking.model is None and cooking.store is None
    # Lines are 1-based and point at each route's mapping.
    assert routes.lines == {"coding": 5, "cooking": 15}
    assert routes.where("cooking") == "routes.yaml, route 'cooking' (line 15)"


def test_json_route_files_are_read_too(tmp_path: Path) -> None:
    path = tmp_path / "routes.json"
    path.write_text('{"routes": [{"name": "a", "examples": ["x one", "x two", "x three"]}]}')
    assert [r.name for r in load_routes(path).spec.routes] == ["a"]
    path.write_text('{"routes": [}')
    with pytest.raises(RouteFileError, match=r"routes.json: not valid JSON \(line 1, column 13\)"):
        load_routes(path)


def test_bad_yaml_is_refused_with_its_line_and_column() -> None:
    message = refused(
        """\
        routes:
          - name: a
            examples: [one, two
          - name: b
        """
    )
    assert message == (
        "routes.yaml: not valid YAML (line 4, column 9): expected ',' or ']', but got ':'"
    )


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(RouteFileError, match=r"nothing\.yaml: cannot read the route file"):
        load_routes(tmp_path / "nothing.yaml")


def test_not_a_mapping_is_refused() -> None:
    assert "must be a mapping with a 'routes' list, not list" in refused("- a\n- b\n")


def test_duplicate_route_names_are_refused_with_the_line() -> None:
    message = refused(GOOD.replace("name: cooking", "name: coding"))
    assert message == "routes.yaml: route name 'coding' (line 15) is used twice"


def test_the_default_name_is_reserved() -> None:
    assert "route name 'default' (line 15) is reserved" in refused(
        GOOD.replace("name: cooking", "name: default")
    )


@pytest.mark.parametrize(
    ("examples", "problem"),
    [
        ("[]", "List should have at least 3 items"),
        ("[only one, and two]", "List should have at least 3 items"),
        ("[" + ", ".join(f"e{i}" for i in range(MAX_EXAMPLES + 1)) + "]", "at most 20 items"),
        ('[a one, "  ", a three]', "an example is empty"),
        ("[same, same, other]", "an example is listed twice"),
    ],
)
def test_bad_examples_are_refused_naming_the_route(examples: str, problem: str) -> None:
    text = GOOD.replace(
        """    examples:
      - how long do I boil an egg
      - recipe for pancakes
      - what can I cook with rice and beans
""",
        f"    examples: {examples}\n",
    )
    message = refused(text)
    assert message.startswith("routes.yaml: route 'cooking' (line 15), examples")
    assert problem in message


def test_missing_examples_and_unknown_fields_are_named() -> None:
    message = refused(
        """\
        routes:
          - name: a
            modle: x
        """
    )
    assert "route 'a' (line 2), examples: Field required" in message
    assert "route 'a' (line 2), modle: Extra inputs are not permitted" in message


def test_an_empty_route_list_is_refused() -> None:
    assert "routes: List should have at least 1 item" in refused("routes: []\n")


def test_an_example_under_two_intents_is_refused() -> None:
    message = refused(GOOD.replace("recipe for pancakes", "How do I sort a list in Python"))
    assert "'How do I sort a list in Python' is listed under both 'coding' and 'cooking'" in (
        message
    )


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("safety: {violence: 0.9}", "safety: {violense: 0.9}"),
        ("safety: {violence: 0.9}", "safety: {violence: 1.5}"),
        ("sampling: {temperature: 0.2}", "sampling: {temperature: 3}"),
        ("sampling: {temperature: 0.2}", "sampling: {temprature: 0.2}"),
    ],
)
def test_bad_actions_are_refused(old: str, new: str) -> None:
    message = refused(GOOD.replace(old, new))
    assert message.startswith("routes.yaml: route 'coding' (line 5), ")


def test_unknown_safety_category_lists_the_known_ones() -> None:
    message = refused(GOOD.replace("{violence: 0.9}", "{violense: 0.9}"))
    assert "unknown safety category 'violense'; known: harassment" in message


# --- actions applied to a request ---------------------------------------------------------


def is_alias(name: str) -> bool:
    return name in {"default", "fast"}


ROUTE = Actions.model_validate(
    {
        "model": "big-model",
        "system_prompt": "Be precise.",
        "sampling": {"temperature": 0.2, "top_p": 0.9},
        "store": False,
    }
)


def test_route_actions_fill_what_the_request_leaves_out() -> None:
    body = {"messages": [{"role": "user", "content": "hi"}]}
    applied = apply_actions(body, ROUTE, is_alias)
    assert applied["model"] == "big-model"
    assert (applied["temperature"], applied["top_p"], applied["store"]) == (0.2, 0.9, False)
    assert applied["messages"] == [
        {"role": "system", "content": "Be precise."},
        {"role": "user", "content": "hi"},
    ]
    assert body == {"messages": [{"role": "user", "content": "hi"}]}, "the input is unchanged"


def test_an_alias_is_replaced_but_an_explicit_model_wins() -> None:
    messages = [{"role": "user", "content": "hi"}]
    assert apply_actions({"model": "fast", "messages": messages}, ROUTE, is_alias)["model"] == (
        "big-model"
    )
    pinned = apply_actions(
        {"model": "small-model", "messages": messages, "temperature": 1.0, "store": True},
        ROUTE,
        is_alias,
    )
    assert (pinned["model"], pinned["temperature"], pinned["store"]) == ("small-model", 1.0, True)
    # A sampling field the request leaves out still takes the route's default.
    assert pinned["top_p"] == 0.9


def test_a_route_without_actions_changes_nothing() -> None:
    body = {"model": "default", "messages": [{"role": "user", "content": "hi"}]}
    assert apply_actions(body, Actions(), is_alias) == body


def test_out_of_scope_examples_are_checked() -> None:
    text = GOOD.replace("default:\n", "default:\n  examples: ['']\n", 1)
    assert "default.examples" in refused(text) and "an example is empty" in refused(text)
    shared = GOOD.replace("default:\n", "default:\n  examples: [recipe for pancakes]\n", 1)
    assert "'recipe for pancakes' is listed under both 'cooking' and 'default'" in refused(shared)


def test_a_logistic_threshold_that_could_never_fall_back_is_refused() -> None:
    # Two routes: the better of two probabilities is at least 0.5, so a threshold of 0.5 or
    # less never sends a message to the default route unless the default has examples.
    logistic = GOOD.replace("threshold: 0.4\n", "threshold: 0.4\nmethod: logistic\n", 1)
    problem = refused(logistic)
    assert "threshold 0.4 never falls back" in problem and "above 0.5" in problem
    assert "threshold 0.5 never falls back" in refused(logistic.replace("0.4", "0.5", 1))
    # Above 1/N, or with default examples (a class of their own), the file is used.
    assert parse_routes(logistic.replace("0.4", "0.55", 1)).spec.threshold == 0.55
    with_default = logistic.replace("default:\n", "default:\n  examples: [book a flight]\n", 1)
    assert parse_routes(with_default).spec.method == "logistic"
    # Other methods' thresholds are similarities: any value is meaningful.
    assert parse_routes(GOOD).spec.threshold == 0.4


def test_name_anchors_count_as_examples_in_the_shared_example_check() -> None:
    # With name_anchors each route's name (its _ . - as spaces) is one of its examples, so
    # two names with one anchor, or an anchor equal to another route's or the default's
    # example, would train one text under two labels.
    anchors = GOOD.replace("threshold: 0.4\n", "threshold: 0.4\nname_anchors: true\n", 1)
    assert parse_routes(anchors).spec.name_anchors
    twins = anchors.replace("name: coding", "name: small_talk").replace(
        "name: cooking", "name: small-talk"
    )
    assert "'small talk' is listed under both 'small_talk' and 'small-talk'" in refused(twins)
    as_example = anchors.replace("recipe for pancakes", "Coding")
    assert "'Coding' is listed under both 'coding' and 'cooking'" in refused(as_example)
    in_default = anchors.replace("default:\n", "default:\n  examples: [cooking]\n", 1)
    assert "'cooking' is listed under both 'cooking' and 'default'" in refused(in_default)
    # A route's own example equal to its anchor is one text under one label: allowed.
    assert parse_routes(anchors.replace("recipe for pancakes", "cooking")).spec.routes
    # Without name_anchors the names are not examples: the same files load.
    for text in (twins, as_example, in_default):
        assert parse_routes(text.replace("name_anchors: true\n", "")).spec.routes
