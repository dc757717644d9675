"""What an error must never show a user: a traceback, a file path, an IP address, a process or actor
id, terminal escape codes; and its message is one sentence."""

from __future__ import annotations

import json
import re
from typing import Any

LEAK_PATTERNS = {
    "traceback": re.compile(r"Traceback \(most recent call last\)|File \"[^\"]+\", line \d+"),
    "file path": re.compile(r"(?<![\w.])/(?:home|root|tmp|usr|opt|var|work|etc|proc|srv|mnt)/|site-packages|"
                            r"[A-Za-z]:\\\\|\.py\b"),
    "ip address": re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])"),
    "process id": re.compile(r"\bpid[=: ]+\d+|\bip=|actor_id|ActorID|\bnode_id\b", re.IGNORECASE),
    "escape code": re.compile(r"\x1b|\\u001b"),
    "ray internals": re.compile(r"RayTaskError|ray::|ServeReplica|ActorDiedError|ActorUnavailableError"),
}
#: Longest message a user should have to read.
MAX_MESSAGE_CHARS = 300


def leaks(text: str) -> list[str]:
    return [name for name, pattern in LEAK_PATTERNS.items() if pattern.search(text)]


def assert_one_sentence(message: str) -> None:
    assert isinstance(message, str) and message.strip(), message
    assert "\n" not in message and len(message) <= MAX_MESSAGE_CHARS, message
    assert not leaks(message), (leaks(message), message)


def assert_no_leaks(body: Any, allowed: str = "") -> None:
    """No leak anywhere in an error body; `allowed` (e.g. text the client sent) is left out of the check."""
    text = json.dumps(body) if not isinstance(body, str) else body
    if allowed:
        text = text.replace(json.dumps(allowed)[1:-1], "")
    assert not leaks(text), (leaks(text), text[:1000])
    if isinstance(body, dict) and "message" in body:
        assert "\n" not in body["message"] and len(body["message"]) <= MAX_MESSAGE_CHARS, body
