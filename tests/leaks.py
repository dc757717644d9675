"""What an error must never show a user: a traceback, a file path, an IP address, a process or actor
id, terminal escape codes, Ray's internals; and its message is one sentence."""

from __future__ import annotations

import re
from typing import Any

LEAK_PATTERNS = {
    "traceback": re.compile(r"Traceback \(most recent call last\)|File \"[^\"]+\", line \d+"),
    "file path": re.compile(r"(?<![\w.])/(?:home|root|tmp|usr|opt|var|work|etc|proc|srv|mnt)/|site-packages|"
                            r"[A-Za-z]:\\|\w\.py\b"),
    "ip address": re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])"),
    "process id": re.compile(r"\bpid[=: ]+\d+|\bip=|actor_id|ActorID|\bnode_id\b", re.IGNORECASE),
    "escape code": re.compile(r"\x1b"),
    "ray internals": re.compile(r"RayTaskError|ray::|ServeReplica|ActorDiedError|ActorUnavailableError"),
}
#: Longest message a user should have to read.
MAX_MESSAGE_CHARS = 300


def leaks(text: str, echoed: str = "") -> list[str]:
    """The kinds of leak in `text`; a match that is part of `echoed` (what the client itself sent) is none."""
    return [name for name, pattern in LEAK_PATTERNS.items()
            if any(match.group(0) not in echoed for match in pattern.finditer(text))]


def assert_one_sentence(message: str, echoed: str = "") -> None:
    assert isinstance(message, str) and message.strip(), message
    assert "\n" not in message.replace(echoed, "") and len(message) <= MAX_MESSAGE_CHARS + len(echoed), message
    assert not leaks(message, echoed), (leaks(message, echoed), message)


def strings_in(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [text for item in value.items() for part in item for text in strings_in(part)]
    if isinstance(value, list | tuple):
        return [text for item in value for text in strings_in(item)]
    return []


def assert_no_leaks(body: dict[str, Any], echoed: str = "") -> None:
    """No leak in any string of an error body, but what the client sent (`echoed`)."""
    for text in strings_in(body):
        assert not leaks(text, echoed), (leaks(text, echoed), text[:1000])
