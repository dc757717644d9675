"""Text that arrives in pieces (from a language model, token by token): which part of it can be
normalised and tokenised now, and which characters the text tokens given to the model cover."""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field

#: A trailing run that may still continue: a word or number not yet followed by a space. Whitespace
#: and CJK characters end a run, so Chinese and Japanese text is released as it comes.
_UNFINISHED_TAIL = re.compile(r"[^\s\u3000-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uff00-\uffef]*\Z")


def release_point(text: str, final: bool = False) -> int:
    """How much of `text` can be normalised now: all of it when `final`, else up to its unfinished
    last word (normalising "$1" before ".50" arrives, or "Hel" before "lo", would change what is said)."""
    return len(text) if final else _UNFINISHED_TAIL.search(text).start()


@dataclass
class TextTokenMap:
    """Where in a text the text tokens of one utterance came from, piece by released piece."""

    #: Character offset of the utterance's first character.
    start: int
    #: Per released piece: text tokens so far and the character offset the piece ends at.
    tokens: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)

    def add(self, tokens: int, end: int) -> None:
        if tokens:
            self.tokens.append((self.tokens[-1] if self.tokens else 0) + tokens)
            self.ends.append(end)

    def char_at(self, tokens: int) -> int:
        """The character offset reached once `tokens` text tokens have been read (proportionally within a piece)."""
        if tokens <= 0 or not self.tokens:
            return self.start
        index = min(bisect.bisect_left(self.tokens, tokens), len(self.tokens) - 1)
        before_tokens = self.tokens[index - 1] if index else 0
        before_end = self.ends[index - 1] if index else self.start
        share = min(1.0, (tokens - before_tokens) / (self.tokens[index] - before_tokens))
        return before_end + round(share * (self.ends[index] - before_end))
