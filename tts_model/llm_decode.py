"""Speech-token generation with CosyVoice2's `Qwen2LM`, one decoding step at a time.

Upstream's `Qwen2LM.inference` is a generator that samples from torch's global RNG, so two
concurrent requests perturb each other's randomness and a run cannot be replayed. This module
runs the same computation (same inputs, the transformer steps of `forward_one_step`, same RAS
sampling with the yaml's parameters, same min/max lengths) as explicit per-sequence state with a private
`torch.Generator`: seeded identically, it yields exactly the tokens upstream yields after
`torch.manual_seed(seed)`. Explicit state is also what lets a scheduler batch many sequences
into one forward per step (continuous batching: sequences join and leave between steps) and
stop a cancelled one at once.

`BistreamState` does the same for `Qwen2LM.inference_bistream`, whose text arrives while it is
decoded: text and speech are interleaved 5:15, and the model samples a fill token when it wants
more text. Upstream blocks on its text generator there; here the sequence simply is not ready
(`SpeechTokenDecoder.ready`) until its next text token arrives, so a scheduler can keep decoding
the others. Upstream reads its text one token at a time and decides after each whether to
decode, so its tokens depend only on the text tokens and the seed, never on when they arrive;
the same holds here.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from tts_core.wire import BistreamRequest, SpeechTokenRequest

logger = logging.getLogger(__name__)


@dataclass
class DecodeState:
    """One sequence being decoded: everything its next step needs."""

    lm_input: torch.Tensor
    min_len: int
    max_len: int
    generator: torch.Generator
    sampling: int
    cache: Any = None
    step: int = 0
    out_tokens: list[int] = field(default_factory=list)
    finished: bool = False
    #: Why the sequence stopped, if it failed; a failed sequence is finished and never stepped again.
    error: BaseException | None = None

    def fail(self, error: BaseException) -> None:
        self.error, self.finished = error, True


@dataclass
class BistreamState(DecodeState):
    """A sequence whose text arrives while it is decoded: upstream's `inference_bistream` loop as data.

    `read_text` is the text upstream's loop has taken from its generator; `text_cache` holds what
    of it (after the prompt transcript) is not in the model's input yet; `pending_text` has
    arrived but not been taken. `decoding` is upstream's inner loop (until a fill token), `final`
    its last loop (after the text ended, until end-of-speech). `out_tokens` holds fill tokens too,
    as upstream's does: they count in the sampling's repetition window.
    """

    text_cache: torch.Tensor | None = None
    prompt_speech: torch.Tensor | None = None
    pending_text: deque[int] = field(default_factory=deque)
    text_ended: bool = False
    read_text: int = 0
    decoding: bool = False
    final: bool = False
    next_fill_index: int = -1
    speech_tokens: int = 0
    max_token_text_ratio: float = 20.0


#: `DecodeState.cache` of a sequence whose cache is a row of the decoder's packed batch.
_PACKED = object()


@dataclass
class _PackedBatch:
    """Sequences decoded together, their KV caches left-padded into one, kept between steps."""

    states: list[DecodeState]
    cache: Any
    #: Left padding of each row.
    pads: list[int]


def _same_states(first: list[DecodeState], second: list[DecodeState]) -> bool:
    return len(first) == len(second) and all(a is b for a, b in zip(first, second, strict=True))


def allowed_scores(logp: torch.Tensor, eos: int, ignore_eos: bool, speech_only: bool) -> torch.Tensor:
    """The scores sampled from: `logp` with the tokens not allowed at this step masked out.

    While end-of-speech (`eos`) is not allowed it is masked out, as current upstream does (the
    installed snapshot resampled up to 100 times and then raised), so a model that keeps choosing
    it speaks exactly the minimum length.

    `speech_only` (ordinary decoding, `Qwen2LM.inference`): the special tokens after end-of-speech
    (task id, fill) are masked out too. `inference` has no use for them (current upstream ends the
    utterance on one, the installed snapshot skips it and, on the first step, feeds the whole
    prompt again); a trained model gives them no mass, and the random twin, which samples the fill
    token so that a bistream sequence asks for text, must not get them here. The fidelity
    reference and the benchmark's baseline mask them the same way.
    """
    if not (ignore_eos or speech_only):
        return logp
    logp = logp.clone()
    if ignore_eos:
        logp[eos] = -float("inf")
    if speech_only:
        logp[eos + 1:] = -float("inf")
    return logp


class SpeechTokenDecoder:
    """Steps `Qwen2LM` decoding for explicit sequences (see the module docstring)."""

    def __init__(self, llm: Any, sampling_params: dict[str, float]):
        self.llm = llm
        self.eos = llm.speech_token_size
        self.top_p = float(sampling_params.get("top_p", 0.8))
        self.top_k = int(sampling_params.get("top_k", 25))
        self.win_size = int(sampling_params.get("win_size", 10))
        self.tau_r = float(sampling_params.get("tau_r", 0.1))
        self.fill = llm.speech_token_size + 2
        self.mix_text, self.mix_speech = (int(n) for n in getattr(llm, "mix_ratio", (5, 15)))
        self._packed: _PackedBatch | None = None

    @property
    def device(self) -> torch.device:
        return self.llm.llm_embedding.weight.device

    @torch.inference_mode()
    def start(self, request: SpeechTokenRequest) -> DecodeState:
        """Build the LM input as `Qwen2LM.inference` does: sos, prompt+text, task id, prompt speech."""
        if not request.text_token:
            raise ValueError("text_token is empty")
        llm, device = self.llm, self.device
        text = torch.tensor([request.prompt_text_token + request.text_token], dtype=torch.int32, device=device)
        text_emb = llm.llm.model.model.embed_tokens(text)
        sos_eos_emb = llm.llm_embedding.weight[llm.sos_eos].reshape(1, 1, -1)
        task_id_emb = llm.llm_embedding.weight[llm.task_id].reshape(1, 1, -1)
        if request.prompt_speech_token:
            speech = torch.tensor([request.prompt_speech_token], dtype=torch.int32, device=device)
            prompt_speech_emb = llm.speech_embedding(speech)
        else:
            prompt_speech_emb = torch.zeros(1, 0, llm.llm_input_size, dtype=text_emb.dtype, device=device)
        lm_input = torch.concat([sos_eos_emb, text_emb, task_id_emb, prompt_speech_emb], dim=1)
        text_len = len(request.text_token)
        generator = torch.Generator(device="cpu").manual_seed(request.seed)
        return DecodeState(lm_input=lm_input, min_len=int(text_len * request.min_token_text_ratio),
                           max_len=int(text_len * request.max_token_text_ratio), generator=generator,
                           sampling=request.sampling)

    @torch.inference_mode()
    def start_bistream(self, request: BistreamRequest) -> BistreamState:
        """Upstream's `inference_bistream` set-up: sos, the prompt transcript as read-ahead text, the
        prompt speech waiting to be interleaved with it."""
        llm, device = self.llm, self.device
        prompt_text = torch.tensor([request.prompt_text_token], dtype=torch.int32, device=device)
        text_cache = llm.llm.model.model.embed_tokens(prompt_text)
        if request.prompt_speech_token:
            speech = torch.tensor([request.prompt_speech_token], dtype=torch.int32, device=device)
            prompt_speech = llm.speech_embedding(speech)
        else:
            prompt_speech = torch.zeros(1, 0, llm.llm_input_size, dtype=text_cache.dtype, device=device)
        return BistreamState(lm_input=llm.llm_embedding.weight[llm.sos_eos].reshape(1, 1, -1), min_len=0, max_len=0,
                             generator=torch.Generator(device="cpu").manual_seed(request.seed),
                             sampling=request.sampling, text_cache=text_cache, prompt_speech=prompt_speech,
                             max_token_text_ratio=request.max_token_text_ratio)

    @staticmethod
    def feed(state: BistreamState, text_token: list[int], text_end: bool = False) -> None:
        """Text that arrived for a bistream sequence (read by `ready`, one token at a time)."""
        if state.text_ended and text_token:
            raise ValueError("text arrived after the end of the text")
        state.pending_text.extend(text_token)
        state.text_ended = state.text_ended or text_end

    @torch.inference_mode()
    def ready(self, state: DecodeState) -> bool:
        """Whether the sequence can take a step now. A bistream sequence first reads its arrived text
        as upstream's loop does, and is not ready while it waits for more."""
        if state.finished:
            return False
        if not isinstance(state, BistreamState):
            return True
        while not state.decoding:
            if state.pending_text:
                self._read_text_token(state, state.pending_text.popleft())
            elif not state.text_ended:
                return False
            elif state.read_text == 0:  # no text at all: nothing to speak (upstream would speak the prompt)
                state.finished = True
                return False
            else:
                self._begin_final(state)
        return True

    @staticmethod
    def text_fed(state: BistreamState) -> int:
        """Text tokens (after the prompt transcript) already in the model's input."""
        return state.read_text - min(state.read_text, state.text_cache.shape[1])

    def _read_text_token(self, state: BistreamState, token: int) -> None:
        """One iteration of upstream's `for this_text in text` loop, up to its inner decoding loop."""
        llm, device = self.llm, self.device
        embedding = llm.llm.model.model.embed_tokens(torch.tensor([[token]], dtype=torch.int32, device=device))
        state.text_cache = torch.concat([state.text_cache, embedding], dim=1)
        state.read_text += 1
        # Interleave the prompt speech with read-ahead text, 5:15, while both last.
        while state.prompt_speech.shape[1] and state.text_cache.shape[1] >= self.mix_text:
            state.lm_input = torch.concat([state.lm_input, state.text_cache[:, :self.mix_text],
                                           state.prompt_speech[:, :self.mix_speech]], dim=1)
            state.text_cache = state.text_cache[:, self.mix_text:]
            state.prompt_speech = state.prompt_speech[:, self.mix_speech:]
        if state.prompt_speech.shape[1]:
            return
        after_fill = bool(state.out_tokens) and state.out_tokens[-1] == self.fill
        at_start = not state.out_tokens and state.lm_input.shape[1] == 1
        if after_fill or at_start:
            if state.text_cache.shape[1] < self.mix_text:
                return  # the model asked for text: wait until a block of it is there
            block = state.text_cache[:, :self.mix_text]
            # After a fill token the new block is the next input; the fill token itself is not fed.
            state.lm_input = block if after_fill else torch.concat([state.lm_input, block], dim=1)
            state.text_cache = state.text_cache[:, self.mix_text:]
        state.decoding = True

    def _begin_final(self, state: BistreamState) -> None:
        """Upstream's last loop: the unread text and the task id, then decode until end-of-speech.

        As upstream does, the input kept from the last step is fed again with them (after a fill
        token it already is in the cache).
        """
        task_id = self.llm.llm_embedding.weight[self.llm.task_id].reshape(1, 1, -1)
        state.lm_input = torch.concat([state.lm_input, state.text_cache, task_id], dim=1)
        state.text_cache = state.text_cache[:, :0]
        state.final = state.decoding = True

    @torch.inference_mode()
    def step(self, state: DecodeState) -> int | None:
        """Advance one step; returns the new speech token, or None (no token this step or finished)."""
        if self._stop_at_max_len(state):
            return None
        if state.cache is _PACKED:
            self._unpack()
        # Upstream's mask covers the cached positions too (all ones: no position is hidden).
        length = state.lm_input.shape[1] + (state.cache.get_seq_length() if state.cache is not None else 0)
        hidden, state.cache = self._transformer(state.lm_input, torch.ones((1, length), dtype=torch.bool,
                                                                             device=state.lm_input.device),
                                                state.cache)
        return self._advance(state, self.llm.llm_decoder(hidden[:, -1]).log_softmax(dim=-1)[0])

    def _transformer(self, lm_input: torch.Tensor, attention_mask: torch.Tensor, cache: Any,
                     position_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, Any]:
        """Qwen2's transformer over `lm_input`: its last layer's (normed) hidden states and the cache.

        Upstream's `forward_one_step` runs the whole `Qwen2ForCausalLM`, whose language-model head
        turns every position into logits over the 151,936-token text vocabulary that nothing reads:
        a quarter of the weights a decoding step reads, and in the prefill a matrix product per
        prompt position. The transformer alone gives the same hidden states, so the same tokens.
        """
        outputs = self.llm.llm.model.model(inputs_embeds=lm_input, attention_mask=attention_mask,
                                           position_ids=position_ids, past_key_values=cache, use_cache=True,
                                           return_dict=True)
        return outputs.last_hidden_state, outputs.past_key_values

    @torch.inference_mode()
    def step_batch(self, states: list[DecodeState]) -> list[int | None]:
        """Advance every sequence one step; sequences past their prompt share one forward.

        A step that feeds more than one position (a sequence's prompt, a bistream sequence's block
        of text) runs alone, as its length differs from every other's; the one-token steps of all
        sequences are stacked into a batch whose KV caches are left-padded to a common length and
        masked, with each sequence's own positions. The padded cache is kept from step to step and
        rebuilt only when the set of sequences changes. Every state must be `ready`.

        A sequence that fails is finished with its `error` set and the others go on as if it had
        never joined: when the batched step itself fails, its cache is rolled back and every
        sequence steps alone, so only the ones that fail alone fail.
        """
        tokens: dict[int, int | None] = {}
        decoding = []
        for index, state in enumerate(states):
            if state.cache is None or state.lm_input.shape[1] != 1 or self._stop_at_max_len(state):
                tokens[index] = self._isolated(self.step, state)
            else:
                decoding.append(index)
        if len(decoding) == 1:
            tokens[decoding[0]] = self._isolated(self.step, states[decoding[0]])
        elif decoding:
            batch = [states[index] for index in decoding]
            try:
                if self._packed is None or not _same_states(self._packed.states, batch):
                    self._pack(batch)
                stepped = self._packed_step()
            except Exception:
                logger.exception("batched decoding step failed; stepping its %d sequences one by one", len(batch))
                stepped = [self._isolated(self.step, state) for state in batch]
            for index, token in zip(decoding, stepped, strict=True):
                tokens[index] = token
        return [tokens[index] for index in range(len(states))]

    @staticmethod
    def _isolated(step: Callable[..., int | None], state: DecodeState, *args: Any) -> int | None:
        """One sequence's step; if it fails, that sequence alone fails."""
        try:
            return step(state, *args)
        except Exception as exc:
            state.fail(exc)
            return None

    def _pack(self, states: list[DecodeState]) -> None:
        """Left-pad the sequences' caches into one batch; sequences left out get their own back."""
        from transformers import DynamicCache

        old = self._packed
        old_layers = old.cache.to_legacy_cache() if old is not None else ()
        old_rows = {id(state): row for row, state in enumerate(old.states)} if old is not None else {}

        def layers_of(state: DecodeState) -> list[tuple[torch.Tensor, torch.Tensor]]:
            if state.cache is _PACKED:  # views into the old batch; the concatenation below copies
                row, pad = old_rows[id(state)], old.pads[old_rows[id(state)]]
                return [(keys[row:row + 1, :, pad:], values[row:row + 1, :, pad:]) for keys, values in old_layers]
            return list(state.cache.to_legacy_cache())

        caches = [layers_of(state) for state in states]
        lengths = [layers[0][0].shape[2] for layers in caches]
        longest = max(lengths)

        def left_padded(tensors: list[torch.Tensor]) -> torch.Tensor:
            return torch.cat([torch.nn.functional.pad(tensor, (0, 0, longest - tensor.shape[2], 0))
                              for tensor in tensors])

        packed = tuple((left_padded([cache[layer][0] for cache in caches]),
                        left_padded([cache[layer][1] for cache in caches]))
                       for layer in range(len(caches[0])))
        if old is not None:
            joining = {id(state) for state in states}
            for state in old.states:
                if id(state) not in joining and not state.finished:
                    self._restore(state, old_layers, old_rows[id(state)], old.pads[old_rows[id(state)]])
        for state in states:
            state.cache = _PACKED
        self._packed = _PackedBatch(states=list(states), cache=DynamicCache.from_legacy_cache(packed),
                                    pads=[longest - length for length in lengths])

    def _unpack(self) -> None:
        """Give every packed sequence its own cache again (one of them is about to step alone)."""
        packed, self._packed = self._packed, None
        layers = packed.cache.to_legacy_cache()
        for row, state in enumerate(packed.states):
            self._restore(state, layers, row, packed.pads[row])

    @staticmethod
    def _restore(state: DecodeState, layers: Any, row: int, pad: int) -> None:
        from transformers import DynamicCache

        state.cache = DynamicCache.from_legacy_cache(tuple(
            (keys[row:row + 1, :, pad:].clone(), values[row:row + 1, :, pad:].clone()) for keys, values in layers))

    def _packed_step(self) -> list[int | None]:
        packed = self._packed
        states = packed.states
        longest = packed.cache.get_seq_length()
        device = states[0].lm_input.device
        attention_mask = torch.ones(len(states), longest + 1, dtype=torch.long, device=device)
        for row, pad in enumerate(packed.pads):
            attention_mask[row, :pad] = 0
        try:
            hidden, cache = self._transformer(torch.cat([state.lm_input for state in states]), attention_mask,
                                              packed.cache,
                                              torch.tensor([[longest - pad] for pad in packed.pads], device=device))
            logp = self.llm.llm_decoder(hidden[:, -1]).log_softmax(dim=-1)
        except Exception:
            # The cache grows layer by layer in place: a forward that failed part-way leaves the
            # first layers a step ahead of the rest, so cut every layer back to where it was.
            packed.cache.crop(longest)
            raise
        packed.cache = cache
        return [self._isolated(self._advance, state, logp[row]) for row, state in enumerate(states)]

    def _stop_at_max_len(self, state: DecodeState) -> bool:
        if isinstance(state, BistreamState):  # upstream has no cap; this guards against a runaway model
            limit = state.max_token_text_ratio * max(state.read_text, self.mix_text)
            if not state.finished and state.speech_tokens >= limit:
                state.finished = True
        elif not state.finished and state.step >= state.max_len:
            state.finished = True
        return state.finished

    def _advance(self, state: DecodeState, logp: torch.Tensor) -> int | None:
        """Sample the next token from this step's log-probabilities and feed it back."""
        if isinstance(state, BistreamState):
            return self._advance_bistream(state, logp)
        llm = self.llm
        token = self.sample(logp, state, ignore_eos=state.step < state.min_len, speech_only=True)
        state.step += 1
        if token == self.eos:
            state.finished = True
            return None
        state.out_tokens.append(token)
        state.lm_input = llm.speech_embedding.weight[token].reshape(1, 1, -1)
        return token

    def _advance_bistream(self, state: BistreamState, logp: torch.Tensor) -> int | None:
        """One step of upstream's inner loop (fill tokens: forced every 16 tokens once one came, end
        of speech refused) or of its last loop (end of speech ends the sequence)."""
        state.step += 1
        if state.final:
            token = self.sample(logp, state, ignore_eos=False)
        elif state.next_fill_index != -1 and len(state.out_tokens) == state.next_fill_index:
            token = self.fill
        else:
            token = self.sample(logp, state, ignore_eos=True)
        if token == self.fill and not state.final:
            state.next_fill_index = len(state.out_tokens) + self.mix_speech + 1
        state.out_tokens.append(token)
        if token == self.eos and state.final:
            state.finished = True
            return None
        if token == self.fill and not state.final:
            state.decoding = False  # wait for the next block of text
            return None
        if token >= self.eos:
            # Upstream raises here; a trained model never samples it. Skipped, as `inference` skips
            # such tokens: nothing is fed back and the step is taken again.
            return None
        state.speech_tokens += 1
        state.lm_input = self.llm.speech_embedding.weight[token].reshape(1, 1, -1)
        self._stop_at_max_len(state)
        return token

    def sample(self, logp: torch.Tensor, state: DecodeState, ignore_eos: bool, speech_only: bool = False) -> int:
        """`Qwen2LM.sampling_ids` with the yaml's RAS sampling, drawing from the sequence's generator,
        over the tokens `allowed_scores` leaves."""
        return self.ras_sampling(allowed_scores(logp, self.eos, ignore_eos, speech_only), state.out_tokens,
                                 state.generator)

    def ras_sampling(self, scores: torch.Tensor, decoded: list[int], generator: torch.Generator) -> int:
        token = self.nucleus_sampling(scores, generator)
        repeats = sum(1 for previous in decoded[-self.win_size:] if previous == token)
        if repeats >= self.win_size * self.tau_r:
            token = int(scores.softmax(dim=0).multinomial(1, replacement=True, generator=generator).item())
        return token

    def nucleus_sampling(self, scores: torch.Tensor, generator: torch.Generator) -> int:
        sorted_prob, sorted_idx = scores.softmax(dim=0).sort(descending=True, stable=True)
        head = sorted_prob[: self.top_k]
        # Upstream adds candidates while the mass *before* each one is under top_p.
        mass_before = torch.cat([head.new_zeros(1), torch.cumsum(head, dim=0)[:-1]])
        count = max(1, int((mass_before < self.top_p).sum().item()))
        choice = head[:count].multinomial(1, replacement=True, generator=generator)
        return int(sorted_idx[choice].item())
