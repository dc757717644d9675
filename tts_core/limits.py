"""Limits and formats the API and the workers must agree on, each defined once."""

from __future__ import annotations

import re
from datetime import UTC, datetime

#: Longest text one synthesis request may carry.
MAX_TEXT_CHARS = 1000
#: Text of one utterance streamed over the speech WebSocket, and utterances open at once on one socket.
MAX_STREAMED_TEXT_CHARS = 5 * MAX_TEXT_CHARS
MAX_OPEN_UTTERANCES = 8
#: Voice ids: letters, digits, `_` and `-`, 1-64 characters.
VOICE_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
VOICE_ID_RE = re.compile(VOICE_ID_PATTERN)
#: Prompt audio: the speech tokenizer takes at most 30 s, and under half a second carries too
#: little of the speaker to clone.
MIN_PROMPT_SECONDS = 0.5
MAX_PROMPT_SECONDS = 30.0
#: Largest uploaded voice sample or prompt recording.
MAX_UPLOAD_BYTES = 50 * 1024 * 1024

#: Every timestamp the API reports: ISO-8601 UTC with microseconds.
TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def format_timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(TIMESTAMP_FORMAT)


def parse_timestamp(value: str) -> datetime:
    return datetime.strptime(value, TIMESTAMP_FORMAT).replace(tzinfo=UTC)


def now_iso() -> str:
    return format_timestamp(datetime.now(UTC))
