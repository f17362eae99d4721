"""Bad input against the real stack: schemathesis over the gateway's OpenAPI document (all
checks plus OpenAI's error shape), and hand-written hostile requests. Nothing may answer 5xx,
every error is `{"error": {"message", "type", "param", "code"}}`, and the gateway keeps
serving afterwards.

The stack runs the scripted test engine (GENERATOR_ENGINE=scripted) so that thousands of
accepted requests cost no model time; limits are off so that fuzzing is not answered 429.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers import ALICE_KEY, MODEL, Stack, start_stack

TESTS = Path(__file__).resolve().parent
ALICE = {"Authorization": f"Bearer {ALICE_KEY}"}
JSON = {**ALICE, "Content-Type": "application/json"}
ADMIN_KEY = "sk-admin-bad-input-0123456789"
# Cases per operation and phase; ~16 operations, 4 phases: some thousands of requests in all
# (the count is in the report, tmp/.../schemathesis.txt).
MAX_EXAMPLES = int(os.environ.get("PARLANCE_FUZZ_EXAMPLES", "100"))


@pytest.fixture(scope="module")
def fuzz_stack(tmp_path_factory: pytest.TempPathFactory, redis_server: str) -> Iterator[Stack]:
    stack = start_stack(
        tmp_path_factory.mktemp("bad-input"),
        redis_server,
        gateway_env={
            "GATEWAY_RPM_LIMIT": "0",
            "GATEWAY_TPM_LIMIT": "0",
            "GATEWAY_ADMIN_KEY": ADMIN_KEY,
            "GATEWAY_GENERATE_TITLES": "false",
        },
        env={
            "generator": {
                "GENERATOR_ENGINE": "scripted",
                "GENERATOR_SCRIPTED_TEXT": "A short scripted answer.",
                "GENERATOR_SCRIPTED_TOKENS_PER_S": "2000",
            }
        },
    )
    yield stack
    stack.stop()


def assert_openai_error(response: httpx.Response, *statuses: int) -> dict:
    assert response.status_code in statuses, (response.status_code, response.text[:500])
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    return error


def post_raw(stack: Stack, content: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(
        f"{stack.gateway_url}/v1/chat/completions",
        content=content,
        headers=JSON if headers is None else headers,
        timeout=60,
    )


def chat(stack: Stack, body: dict) -> httpx.Response:
    return post_raw(stack, json.dumps(body).encode())


def still_serving(stack: Stack) -> None:
    response = chat(stack, {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]})
    assert response.status_code == 200, response.text
    assert stack.services["gateway"].running


# The user routes with a user's key, the admin routes with the admin key (with a user's key they
# only ever answer 401, which tests nothing behind the authentication).
@pytest.mark.parametrize(
    ("scope", "key", "selection"),
    [
        ("user", ALICE_KEY, ["--exclude-path-regex", "^/v1/admin/"]),
        ("admin", ADMIN_KEY, ["--include-path-regex", "^/v1/admin/"]),
    ],
)
def test_schemathesis_finds_no_server_error_and_only_openai_errors(
    fuzz_stack: Stack, scope: str, key: str, selection: list[str]
) -> None:
    report = fuzz_stack.data_dir / f"schemathesis-{scope}.txt"
    command = [
        str(Path(sys.executable).parent / "schemathesis"),
        "--config-file",
        str(TESTS / "schemathesis.toml"),
        "run",
        f"{fuzz_stack.gateway_url}/openapi.json",
        "--checks",
        "all",
        # See tests/schemathesis.toml: a 404 for a made-up active_message_id is not a lost
        # conversation.
        "--exclude-checks",
        "ensure_resource_availability",
        *selection,
        "--header",
        f"Authorization: Bearer {key}",
        "--max-examples",
        str(MAX_EXAMPLES),
        # One worker: with a fixed seed the run is then the same every time.
        "--workers",
        "1",
        "--seed",
        "9",
        "--no-color",
        "--request-timeout",
        "30",
    ]
    env = {
        **os.environ,
        "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "SCHEMATHESIS_HOOKS": "openai_error_check",
    }
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=480)
    report.write_text(result.stdout + result.stderr)
    summary = result.stdout[-6000:]
    assert result.returncode == 0, f"schemathesis failed (full report: {report}):\n{summary}"
    assert "openai_error_shape" not in result.stdout or "0 failures" in summary
    still_serving(fuzz_stack)


# --- hand-written hostile requests ----------------------------------------------------------


def test_huge_body_is_413(fuzz_stack: Stack) -> None:
    filler = "x" * 2_000_000
    body = {"model": MODEL, "messages": [{"role": "user", "content": filler}]}
    error = assert_openai_error(chat(fuzz_stack, body), 413)
    assert error["code"] == "request_too_large"

    # Chunked upload: no Content-Length, the limit still holds while the body streams in.
    def chunks() -> Iterator[bytes]:
        yield b'{"model": "x", "messages": [{"role": "user", "content": "'
        for _ in range(40):
            yield b"y" * 65_536
        yield b'"}]}'

    response = httpx.post(
        f"{fuzz_stack.gateway_url}/v1/chat/completions", content=chunks(), headers=JSON, timeout=60
    )
    assert_openai_error(response, 413)
    still_serving(fuzz_stack)


@pytest.mark.parametrize("depth", [1_000, 100_000])
def test_deeply_nested_json_is_refused_cleanly(fuzz_stack: Stack, depth: int) -> None:
    nested = "[" * depth + "]" * depth
    for field in ("metadata", "messages", "stop"):
        body = f'{{"model": "{MODEL}", "messages": [{{"role": "user", "content": "Hi"}}]'
        body = body.replace('"messages": [', f'"{field}": {nested}, "messages": [', 1)
        if field == "messages":
            body = f'{{"model": "{MODEL}", "messages": {nested}}}'
        else:
            body += "}"
        assert_openai_error(post_raw(fuzz_stack, body.encode()), 400, 413)
    # Nested objects in an extension field nobody reads.
    deep_object = '{"a": ' * depth + "1" + "}" * depth
    body = (
        f'{{"model": "{MODEL}", "messages": [{{"role": "user", "content": "Hi"}}], '
        f'"extra": {deep_object}}}'
    )
    response = post_raw(fuzz_stack, body.encode())
    assert response.status_code in (200, 400, 413), response.text[:300]
    if response.status_code != 200:
        assert_openai_error(response, 400, 413)
    still_serving(fuzz_stack)


def test_invalid_utf8_is_400(fuzz_stack: Stack) -> None:
    body = f'{{"model": "{MODEL}", "messages": [{{"role": "user", "content": "'.encode()
    for bad in (b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"):
        assert_openai_error(post_raw(fuzz_stack, body + bad + b'"}]}'), 400)
    # A lone surrogate escaped in JSON is valid JSON but not valid Unicode text; it once
    # reached the gRPC message and answered 500.
    for extra in (b"", b', "store": true', b', "stream": true'):
        response = post_raw(fuzz_stack, body + b'\\ud800 hi"}]' + extra + b"}")
        assert_openai_error(response, 400)
    # A surrogate pair is an ordinary (astral) character.
    response = post_raw(fuzz_stack, body + b'\\ud83d\\ude00 hi"}]}')
    assert response.status_code == 200, response.text
    for path, payload in (
        ("/v1/conversations", b'{"title": "\\udfff"}'),
        ("/v1/moderations", b'{"input": ["ok", "\\ud800"]}'),
    ):
        response = httpx.post(
            f"{fuzz_stack.gateway_url}{path}", content=payload, headers=JSON, timeout=30
        )
        assert_openai_error(response, 400)
    still_serving(fuzz_stack)


@pytest.mark.parametrize("store", [False, True])
def test_control_characters_are_accepted_or_refused_cleanly(fuzz_stack: Stack, store: bool) -> None:
    content = "nul\x00 bell\x07 esc\x1b[31m del\x7f c1\x85 bidi\u202e zw\u200b end"
    response = chat(
        fuzz_stack,
        {"model": MODEL, "messages": [{"role": "user", "content": content}], "store": store},
    )
    if response.status_code == 200:
        assert response.json()["choices"][0]["message"]["content"]
    else:
        assert_openai_error(response, 400)
    # The same in a stream.
    response = chat(
        fuzz_stack,
        {"model": MODEL, "messages": [{"role": "user", "content": content}], "stream": True},
    )
    assert response.status_code in (200, 400), response.text[:300]
    still_serving(fuzz_stack)


@pytest.mark.parametrize(
    "fields",
    [
        {"n": 10**9},
        {"n": 100},
        {"n": 0},
        {"n": -1},
        {"max_tokens": 10**12},
        {"max_tokens": 2**64},
        {"max_tokens": 10**400},
        {"max_tokens": 0},
        {"max_tokens": -5},
        {"max_completion_tokens": 10**9},
        {"top_logprobs": 10**6, "logprobs": True},
        {"seed": 2**70},
        {"temperature": -1},
        {"temperature": 1e308},
        {"top_p": -0.5},
        {"frequency_penalty": -100},
        {"presence_penalty": 3},
        {"top_k": -10},
        {"repetition_penalty": 0},
        {"min_p": 2},
    ],
    ids=lambda f: ",".join(f"{k}={str(v)[:12]}" for k, v in f.items()),
)
def test_out_of_range_numbers_are_400(fuzz_stack: Stack, fields: dict) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], **fields}
    assert_openai_error(chat(fuzz_stack, body), 400)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999", "-1e999"])
@pytest.mark.parametrize("field", ["temperature", "top_p", "frequency_penalty", "min_p"])
def test_nan_and_infinite_sampling_values_are_400(
    fuzz_stack: Stack, field: str, literal: str
) -> None:
    body = (
        f'{{"model": "{MODEL}", "messages": [{{"role": "user", "content": "Hi"}}], '
        f'"{field}": {literal}}}'
    )
    error = assert_openai_error(post_raw(fuzz_stack, body.encode()), 400)
    assert error["param"] == field or error["param"] is None


@pytest.mark.parametrize(
    "body",
    [
        {"model": MODEL, "messages": []},
        {"model": MODEL, "messages": [{"role": "wizard", "content": "Hi"}]},
        {"model": MODEL, "messages": [{"role": "", "content": "Hi"}]},
        {"model": MODEL, "messages": [{"role": "USER", "content": "Hi"}]},
        {"model": MODEL, "messages": [{"content": "Hi"}]},
        {"model": MODEL, "messages": [{"role": "tool", "content": "Hi"}]},
        {"model": MODEL},
        {"messages": [{"role": "user", "content": "Hi"}]},
        {"model": MODEL, "messages": "Hi"},
        {"model": MODEL, "messages": {"role": "user", "content": "Hi"}},
        {"model": MODEL, "messages": [5]},
        {"model": MODEL, "messages": [None]},
        {"model": MODEL, "messages": [["user", "Hi"]]},
        {"model": MODEL, "messages": [{"role": "user", "content": 5}]},
        {"model": MODEL, "messages": [{"role": "user", "content": {"text": "Hi"}}]},
        {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
        {"model": MODEL, "messages": [{"role": "user", "content": [5]}]},
        {"model": 5, "messages": [{"role": "user", "content": "Hi"}]},
        {"model": None, "messages": [{"role": "user", "content": "Hi"}]},
        {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "stream": "maybe"},
        {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "stop": [1, 2]},
        {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "stop": ["a"] * 5},
        {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "n": "two"},
        {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "n": 1.5},
        {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "temperature": "hot"},
        {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "metadata": [1]},
        {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "tools": [{}]},
        {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "logit_bias": {"1": 5}},
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Hi"}],
            "response_format": {"type": "json_schema"},
        },
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Hi"}],
            "stream_options": "yes",
        },
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Hi"}],
            "conversation_id": "c" * 1000,
        },
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Hi"}],
            "conversation_id": "conv_does_not_exist",
        },
        {"model": "no-such-model", "messages": [{"role": "user", "content": "Hi"}]},
        [],
        [{"model": MODEL}],
        "a string",
        5,
        None,
    ],
)
def test_wrong_shapes_are_openai_errors(fuzz_stack: Stack, body: object) -> None:
    assert_openai_error(post_raw(fuzz_stack, json.dumps(body).encode()), 400, 404)


@pytest.mark.parametrize(
    "raw", [b"", b"{", b"{'model': 'x'}", b"\x00\x01\x02", b'{"model": "x",}', b"nul\x00"]
)
def test_unparsable_bodies_are_400(fuzz_stack: Stack, raw: bytes) -> None:
    assert_openai_error(post_raw(fuzz_stack, raw), 400)


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_missing_or_wrong_content_type(fuzz_stack: Stack, content_type: str | None) -> None:
    headers = dict(ALICE)
    if content_type:
        headers["Content-Type"] = content_type
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}).encode()
    response = post_raw(fuzz_stack, body, headers)
    if response.status_code != 200:
        assert_openai_error(response, 400, 415)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/chat/completions"),
        ("PUT", "/v1/chat/completions"),
        ("DELETE", "/v1/chat/completions"),
        ("GET", "/v1/moderations"),
        ("POST", "/v1/models"),
        ("PUT", "/v1/conversations"),
        ("POST", "/v1/conversations/conv_x"),
        ("GET", "/v1/conversations/conv_x/messages/msg_x/feedback"),
    ],
)
def test_wrong_method_is_405_in_openai_shape(fuzz_stack: Stack, method: str, path: str) -> None:
    response = httpx.request(method, f"{fuzz_stack.gateway_url}{path}", headers=ALICE, timeout=30)
    error = assert_openai_error(response, 405)
    assert error["code"] == "method_not_allowed"
    assert "allow" in {k.lower() for k in response.headers}


@pytest.mark.parametrize(
    "path",
    [
        "/v1/conversations?limit=abc",
        "/v1/conversations?limit=0",
        "/v1/conversations?limit=100000",
        "/v1/conversations?after=%00%ff",
        "/v1/conversations/search",
        "/v1/conversations/search?q=",
        "/v1/conversations/search?q=" + "a" * 5000,
        "/v1/conversations/" + "c" * 5000,
        "/v1/conversations/%00",
        "/v1/conversations/..%2f..%2fetc%2fpasswd",
        "/v1/models/%00",
        "/v1/nope",
    ],
)
def test_bad_paths_and_queries_are_openai_errors(fuzz_stack: Stack, path: str) -> None:
    response = httpx.get(f"{fuzz_stack.gateway_url}{path}", headers=ALICE, timeout=30)
    assert_openai_error(response, 400, 404, 414)


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Basic abc", "Bearer sk-wrong", "Bearer " + "k" * 100_00],
)
def test_bad_credentials_are_401(fuzz_stack: Stack, authorization: str | None) -> None:
    headers = {"Content-Type": "application/json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]})
    assert_openai_error(post_raw(fuzz_stack, body.encode(), headers), 401)
    still_serving(fuzz_stack)


# What the admin-route fuzzing found: a bool taken for a limit, and limits past the 32-bit
# column answered 500.
@pytest.mark.parametrize(
    ("limits", "status"),
    [
        ({"rpm_limit": False}, 400),
        ({"max_concurrent": "5"}, 400),
        ({"tpm_limit": 2**40}, 400),
        ({"rpm_limit": 10.5}, 400),
        ({"max_tokens": 0}, 400),
        ({"rpm_limit": 10.0, "tpm_limit": 2**31 - 1}, 201),
    ],
)
def test_admin_key_limits_are_json_integers_within_their_column(
    fuzz_stack: Stack, limits: dict, status: int
) -> None:
    response = httpx.post(
        f"{fuzz_stack.gateway_url}/v1/admin/keys",
        json={"user_id": "limits-check", **limits},
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        timeout=30,
    )
    if status == 201:
        assert response.status_code == 201, response.text
        assert response.json()["rpm_limit"] == 10
        assert response.json()["tpm_limit"] == 2**31 - 1
    else:
        error = assert_openai_error(response, status)
        assert error["param"] == next(iter(limits))
