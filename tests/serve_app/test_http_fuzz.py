"""Fuzzing the running app from its own OpenAPI schema (schemathesis), and random text through the real
pipeline (hypothesis): no input gives a 5xx, and every error has the contract's shape and leaks nothing
from inside the server.

Bounded to keep the suite fast: a dozen examples per operation, no shrinking.
Async task routes are left out (they have their own tests).
"""

from __future__ import annotations

import json
from urllib.parse import unquote, urlsplit

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from tests.leaks import assert_no_leaks, assert_one_sentence, strings_in
from tests.serve_app.http_helpers import ERROR_CODE_RE, assert_error, assert_synthesis_result
from tts_core.limits import MAX_TEXT_CHARS

#: Every operation of the contract except the async tasks, as the schema names them.
OPERATIONS = [("GET", "/"), ("GET", "/health"), ("POST", "/api/v1/voices/"), ("GET", "/api/v1/voices/"),
              ("GET", "/api/v1/voices/stats/summary"), ("GET", "/api/v1/voices/pretrained/list"),
              ("GET", "/api/v1/voices/{voice_id}"), ("PUT", "/api/v1/voices/{voice_id}"),
              ("DELETE", "/api/v1/voices/{voice_id}"), ("POST", "/api/v1/synthesize/sft"),
              ("POST", "/api/v1/synthesize/instruct"), ("POST", "/api/v1/synthesize/zero-shot"),
              ("POST", "/api/v1/synthesize/cross-lingual"), ("GET", "/api/v1/audio/{filename}")]
EXAMPLES_PER_OPERATION = 12  # positive and negative cases mixed: ~170 requests in all


@pytest.fixture(scope="module")
def api_schema(serve_cluster):
    # Loaded from the running app; schemathesis' own pytest loader (`from_fixture`) does not support pytest 9.
    schema = schemathesis.openapi.from_url(f"{serve_cluster['base_url']}/openapi.json", timeout=30)
    return schema.exclude(path_regex=r"^/api/v1/async")


def check_response(response) -> None:
    """No 5xx; any 4xx is the one error shape with `details.path` the request's path."""
    request = response.request
    where = f"{request.method} {request.url}"
    assert response.status_code < 500, (where, response.status_code, response.content[:500])
    if response.status_code < 400:
        return
    content_type = (response.headers.get("content-type") or [""])[0]
    assert content_type.startswith("application/json"), (where, content_type)
    body = json.loads(response.content)
    assert isinstance(body, dict) and set(body) == {"error", "message", "details"}, (where, body)
    assert isinstance(body["error"], str) and ERROR_CODE_RE.fullmatch(body["error"]), (where, body)
    assert isinstance(body["message"], str) and body["message"], (where, body)
    assert isinstance(body["details"], dict), (where, body)
    assert unquote(body["details"]["path"]) == unquote(urlsplit(request.url).path), (where, body)
    if response.status_code == 422:
        assert body["error"] == "validation_error" and body["details"]["errors"], (where, body)
    # Fuzzed values may come back (an id, a file name): only what the server adds must not leak.
    assert_no_leaks(body, echoed=sent_text(request))


def sent_text(request) -> str:
    """Everything the client sent, as text: the URL, the raw body and the strings of a JSON body."""
    raw = request.body or b""
    raw = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    try:
        decoded = " ".join(strings_in(json.loads(raw)))
    except ValueError:
        decoded = ""
    return " ".join((unquote(str(request.url)), raw, decoded))


def test_schema_lists_exactly_the_contract_operations(api_schema) -> None:
    operations = {(result.ok().method.upper(), result.ok().path) for result in api_schema.get_all_operations()}
    assert operations == set(OPERATIONS)


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_openapi_fuzz(api_schema, method, path) -> None:
    operation = api_schema[path][method]
    cases = (operation.as_strategy(GenerationMode.POSITIVE) | operation.as_strategy(GenerationMode.NEGATIVE))

    @given(case=cases)
    @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    def fuzz(case) -> None:
        check_response(case.call(timeout=120))

    fuzz()


# Text of any kind, through the real pipeline: control characters, emoji, mixed scripts, markup, and up
# to the longest text a request may carry (the in-process front-end test tries many more).
any_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=MAX_TEXT_CHARS)
interesting_text = st.sampled_from(["😀😀😀", "<b>Hi</b> & <i>bye</i>", "1234567890", "...", "!?", "\u200b",
                                    "a\x00b", "Ωμέγα ñandú", "こんにちは", "안녕하세요", "مرحبا", "\n\nHi\n\n",
                                    "$%^&*()", "https://example.com/a?b=c", "1/2 + 3.5% = ?", "ー", "ℌ𝔢𝔩𝔩𝔬",
                                    "see [1] here", "Price [5kg]", "[31", "Hello\u001b[31m world", "...!!!???,,,"])


@given(text=st.one_of(interesting_text, any_text))
@settings(max_examples=20, deadline=None, derandomize=True, database=None, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=list(HealthCheck))
def test_any_text_synthesizes_or_is_refused_cleanly(serve_cluster, text) -> None:
    with httpx.Client(base_url=serve_cluster["base_url"], timeout=120) as client:
        response = client.post("/api/v1/synthesize/sft",
                               json={"text": text, "voice_id": "pretrained_voice_001", "seed": 1})
    if response.status_code == 200:
        assert_synthesis_result(response.json())
    else:
        body = assert_error(response, 400, "invalid_request")
        assert_one_sentence(body["message"])
        assert_no_leaks(body)
