"""The inbox of live bistream sequences: how text reaches an LLM sequence that is already decoding.

A Ray Serve call cannot stream its input, and a handle call cannot pick the replica that holds a
given sequence. So whoever holds the text (the ingress, which holds the client's socket) posts it
here under the sequence's key, and the LLM replica that decodes the sequence pulls it, wherever
either runs: nothing depends on routing, autoscaling or which replica took the sequence. The
consumer's acknowledgements (flow control) travel the same way. One named actor per application,
torch-free; boxes are small (token ids) and bounded, and forgotten when their sequence is done.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from deployments.actors import named_detached_actor
from tts_core.wire import BistreamInput

#: Undelivered messages one box may hold; a producer past it is failing to end its sequence.
MAX_PENDING = 4096
#: Boxes nobody touched for this long belong to a caller that died; they are dropped.
IDLE_EXPIRY_S = 600.0


class InboxFull(RuntimeError):
    """A box holds MAX_PENDING undelivered messages."""


@dataclass
class _Box:
    messages: list[BistreamInput] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    touched: float = field(default_factory=time.monotonic)
    closed: bool = False


class BistreamInbox:
    """Messages on their way to live bistream sequences, by sequence key."""

    def __init__(self) -> None:
        self.boxes: dict[str, _Box] = {}

    def _box(self, key: str) -> _Box:
        box = self.boxes.get(key)
        if box is None:
            self._expire()
            box = self.boxes[key] = _Box()
        box.touched = time.monotonic()
        return box

    def _expire(self) -> None:
        cutoff = time.monotonic() - IDLE_EXPIRY_S
        for key in [key for key, box in self.boxes.items() if box.touched < cutoff]:
            self.discard(key)

    def put(self, key: str, message: BistreamInput) -> None:
        """Post a message (a box is created by whichever of `put` and `take` comes first)."""
        box = self._box(key)
        if len(box.messages) >= MAX_PENDING:
            raise InboxFull(f"inbox {key} holds {MAX_PENDING} undelivered messages")
        box.messages.append(message)
        box.arrived.set()

    async def take(self, key: str, wait_s: float) -> list[BistreamInput] | None:
        """Every message waiting for `key`, waiting up to `wait_s` for one; None once discarded."""
        box = self._box(key)
        if not box.messages and not box.closed:
            box.arrived.clear()
            try:
                await asyncio.wait_for(box.arrived.wait(), wait_s)
            except TimeoutError:
                pass
        if box.closed:
            return None
        messages, box.messages = box.messages, []
        return messages

    def discard(self, key: str) -> None:
        """Forget a sequence's box; a `take` waiting on it returns None."""
        box = self.boxes.pop(key, None)
        if box is not None:
            box.closed = True
            box.arrived.set()

    def size(self) -> int:
        return len(self.boxes)


def bistream_inbox_actor(app_name: str):
    """The application's inbox actor (created by whichever replica asks first)."""
    return named_detached_actor(BistreamInbox, app_name, "bistream-inbox", max_concurrency=1000)
