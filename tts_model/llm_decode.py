"""Speech-token generation with CosyVoice2's `Qwen2LM`, one decoding step at a time.

Upstream's `Qwen2LM.inference` is a generator that samples from torch's global RNG, so two
concurrent requests perturb each other's randomness and a run cannot be replayed. This module
runs the same computation (same inputs, same `forward_one_step` calls, same RAS sampling with
the yaml's parameters, same min/max lengths) as explicit per-sequence state with a private
`torch.Generator`: seeded identically, it yields exactly the tokens upstream yields after
`torch.manual_seed(seed)`. Explicit state is also what lets a scheduler batch many sequences
into one forward per step (continuous batching: sequences join and leave between steps) and
stop a cancelled one at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from tts_core.wire import SpeechTokenRequest

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


class SpeechTokenDecoder:
    """Steps `Qwen2LM` decoding for explicit sequences (see the module docstring)."""

    def __init__(self, llm: Any, sampling_params: dict[str, float]):
        self.llm = llm
        self.eos = llm.speech_token_size
        self.top_p = float(sampling_params.get("top_p", 0.8))
        self.top_k = int(sampling_params.get("top_k", 25))
        self.win_size = int(sampling_params.get("win_size", 10))
        self.tau_r = float(sampling_params.get("tau_r", 0.1))
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
    def step(self, state: DecodeState) -> int | None:
        """Advance one step; returns the new speech token, or None (no token this step or finished)."""
        if self._stop_at_max_len(state):
            return None
        if state.cache is _PACKED:
            self._unpack()
        length = state.lm_input.shape[1]
        masks = torch.tril(torch.ones((1, length, length), device=state.lm_input.device)).to(torch.bool)
        y_pred, state.cache = self.llm.llm.forward_one_step(state.lm_input, masks=masks, cache=state.cache)
        return self._advance(state, self.llm.llm_decoder(y_pred[:, -1]).log_softmax(dim=-1)[0])

    @torch.inference_mode()
    def step_batch(self, states: list[DecodeState]) -> list[int | None]:
        """Advance every sequence one step; sequences past their prompt share one forward.

        A sequence's first step (its prompt) runs alone, as its length differs from every other's;
        after that, the one-token steps of all sequences are stacked into a batch whose KV caches
        are left-padded to a common length and masked, with each sequence's own positions. The
        padded cache is kept from step to step and rebuilt only when the set of sequences changes.

        A sequence that fails is finished with its `error` set and the others go on as if it had
        never joined: when the batched step itself fails, its cache is rolled back and every
        sequence steps alone, so only the ones that fail alone fail.
        """
        tokens: dict[int, int | None] = {}
        decoding = []
        for index, state in enumerate(states):
            if state.cache is None or self._stop_at_max_len(state):
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
            outputs = self.llm.llm.model(inputs_embeds=torch.cat([state.lm_input for state in states]),
                                         attention_mask=attention_mask,
                                         position_ids=torch.tensor([[longest - pad] for pad in packed.pads],
                                                                   device=device),
                                         past_key_values=packed.cache, use_cache=True,
                                         output_hidden_states=True, return_dict=True)
            logp = self.llm.llm_decoder(outputs.hidden_states[-1][:, -1]).log_softmax(dim=-1)
        except Exception:
            # The cache grows layer by layer in place: a forward that failed part-way leaves the
            # first layers a step ahead of the rest, so cut every layer back to where it was.
            packed.cache.crop(longest)
            raise
        packed.cache = outputs.past_key_values
        return [self._isolated(self._advance, state, logp[row]) for row, state in enumerate(states)]

    def _stop_at_max_len(self, state: DecodeState) -> bool:
        if not state.finished and state.step >= state.max_len:
            state.finished = True
        return state.finished

    def _advance(self, state: DecodeState, logp: torch.Tensor) -> int | None:
        """Sample the next token from this step's log-probabilities and feed it back."""
        llm = self.llm
        token = self.sample(logp, state, ignore_eos=state.step < state.min_len)
        state.step += 1
        if token == self.eos:
            state.finished = True
            return None
        if token > self.eos:  # upstream skips non-speech special tokens without feeding them back
            return None
        state.out_tokens.append(token)
        state.lm_input = llm.speech_embedding.weight[token].reshape(1, 1, -1)
        return token

    def sample(self, logp: torch.Tensor, state: DecodeState, ignore_eos: bool) -> int:
        """`Qwen2LM.sampling_ids` with the yaml's RAS sampling, drawing from the sequence's generator.

        While end-of-speech is not allowed it is masked out, as current upstream does (the installed
        snapshot resampled up to 100 times and then raised), so a model that keeps choosing it
        speaks exactly the minimum length.
        """
        if ignore_eos:
            logp = logp.clone()
            logp[self.eos] = -float("inf")
        return self.ras_sampling(logp, state.out_tokens, state.generator)

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
