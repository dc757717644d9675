"""Upstream's streaming schedule as data: which tokens each flow + vocoder call decodes, and the
per-chunk seeds. Torch-free, so the pipeline that follows it never loads the model stack."""

from __future__ import annotations

import math
from dataclasses import dataclass

#: Flow chunk in speech tokens; must match the model's training `static_chunk_size`.
TOKEN_HOP_LEN = 25


def first_hop_len(prompt_token_len: int) -> int:
    """The first streamed chunk is padded so prompt + chunk ends on a flow chunk boundary."""
    return TOKEN_HOP_LEN + math.ceil(prompt_token_len / TOKEN_HOP_LEN) * TOKEN_HOP_LEN - prompt_token_len


def chunk_seed(seed: int, segment: int, chunk: int) -> int:
    """Seed of HiFT's source noise for one chunk: the vocoder draws random phases and noise,
    so a reproducible run seeds each chunk from the request's seed."""
    return (seed * 1_000_003 + segment * 10_007 + chunk) % (2**63)


def segment_seed(seed: int, segment: int) -> int:
    """Seed of the LLM's sampling for one text segment."""
    return (seed * 1_000_003 + segment * 7_919) % (2**63)


@dataclass
class ChunkPlan:
    """One flow + vocoder call: decode `tokens[:end]`, emitting the mel after `token_offset`."""

    end: int
    token_offset: int
    streaming: bool
    finalize: bool


@dataclass
class StreamPlanner:
    """Upstream's streaming schedule as data: when enough tokens have arrived, which chunk next.

    A chunk needs its hop of tokens plus the flow's lookahead; once the LLM is done the rest is
    decoded in one final (non-streaming, finalising) call. Without streaming, that final call is
    the only one.
    """

    prompt_token_len: int
    stream: bool
    pre_lookahead_len: int = 3
    token_offset: int = 0
    done: bool = False

    def next_chunk(self, n_tokens: int, llm_finished: bool) -> ChunkPlan | None:
        if self.done:
            return None
        if self.stream:
            hop = first_hop_len(self.prompt_token_len) if self.token_offset == 0 else TOKEN_HOP_LEN
            if n_tokens - self.token_offset >= hop + self.pre_lookahead_len:
                plan = ChunkPlan(end=self.token_offset + hop + self.pre_lookahead_len, token_offset=self.token_offset,
                                 streaming=True, finalize=False)
                self.token_offset += hop
                return plan
        if llm_finished:
            self.done = True
            return ChunkPlan(end=n_tokens, token_offset=self.token_offset, streaming=False, finalize=True)
        return None
