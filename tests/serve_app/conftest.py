"""Fixtures of the HTTP contract tests: a client of the session's Serve app and a registered voice."""

from __future__ import annotations

import httpx
import pytest

from tests.serve_app.http_helpers import create_voice, delete_quietly, unique_id


@pytest.fixture
def client(serve_cluster) -> httpx.Client:
    """An HTTP client of the running app (function-scoped: it survives a cluster restart)."""
    with httpx.Client(base_url=serve_cluster["base_url"], timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def module_client(serve_cluster) -> httpx.Client:
    with httpx.Client(base_url=serve_cluster["base_url"], timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def zero_shot_voice(module_client: httpx.Client) -> dict:
    """A registered zero_shot voice (with a transcript), deleted after the module."""
    voice = create_voice(module_client, unique_id("zs"), "zero_shot", language="en")
    yield voice
    delete_quietly(module_client, voice["voice_id"])
