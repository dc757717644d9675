"""Limits and formats the API and the workers must agree on, each defined once."""

from __future__ import annotations

import re
from datetime import UTC, datetime

#: Longest text one synthesis request may carry.
MAX_TEXT_CHARS = 1000
#: Longest `input` of the OpenAI speech route, as OpenAI's API defines it.
MAX_OPENAI_INPUT_CHARS = 4096
#: Longest instruction of instruct mode.
MAX_INSTRUCT_CHARS = 500
#: Speaking rates the model produces (the vocoder stretches the mel by 1/speed).
MIN_SPEED, MAX_SPEED = 0.5, 2.0
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
#: Largest request body: a multipart upload (the file, its form fields and framing), and any other
#: body (JSON or a url-encoded form, whose longest field is a few KB).
MAX_MULTIPART_BODY_BYTES = MAX_UPLOAD_BYTES + 1024 * 1024
MAX_BODY_BYTES = 256 * 1024

#: Every timestamp the API reports: ISO-8601 UTC with microseconds.
TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def format_timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(TIMESTAMP_FORMAT)


def parse_timestamp(value: str) -> datetime:
    return datetime.strptime(value, TIMESTAMP_FORMAT).replace(tzinfo=UTC)


def now_iso() -> str:
    return format_timestamp(datetime.now(UTC))
