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

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class SpeechTokenRequest:
    """What the LLM needs for one text segment (all token ids, plain lists)."""

    #: Qwen tokens of the text to speak.
    text_token: list[int]
    #: Qwen tokens of the prompt transcript (zero-shot) or `instruction<|endofprompt|>` (instruct).
    prompt_text_token: list[int] = field(default_factory=list)
    #: Speech tokens of the prompt audio (zero-shot only).
    prompt_speech_token: list[int] = field(default_factory=list)
    #: Seed of this segment's sampling; the same seed gives the same tokens.
    seed: int = 0
    sampling: int = 25
    max_token_text_ratio: float = 20.0
    min_token_text_ratio: float = 2.0


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


class SpeechTokenDecoder:
    """Steps `Qwen2LM` decoding for explicit sequences (see the module docstring)."""

    def __init__(self, llm: Any, sampling_params: dict[str, float]):
        self.llm = llm
        self.eos = llm.speech_token_size
        self.top_p = float(sampling_params.get("top_p", 0.8))
        self.top_k = int(sampling_params.get("top_k", 25))
        self.win_size = int(sampling_params.get("win_size", 10))
        self.tau_r = float(sampling_params.get("tau_r", 0.1))

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
        length = state.lm_input.shape[1]
        masks = torch.tril(torch.ones((1, length, length), device=state.lm_input.device)).to(torch.bool)
        y_pred, state.cache = self.llm.llm.forward_one_step(state.lm_input, masks=masks, cache=state.cache)
        return self._advance(state, self.llm.llm_decoder(y_pred[:, -1]).log_softmax(dim=-1)[0])

    @torch.inference_mode()
    def step_batch(self, states: list[DecodeState]) -> list[int | None]:
        """Advance every sequence one step; sequences past their prompt share one forward.

        A sequence's first step (its prompt) runs alone, as its length differs from every other's;
        after that, the one-token steps of all sequences are stacked into a batch whose KV caches
        are left-padded to a common length and masked, with each sequence's own positions.
        """
        tokens: dict[int, int | None] = {}
        decoding = []
        for index, state in enumerate(states):
            if state.cache is None or self._stop_at_max_len(state):
                tokens[index] = self.step(state)
            else:
                decoding.append(index)
        if len(decoding) == 1:
            tokens[decoding[0]] = self.step(states[decoding[0]])
        elif decoding:
            batch = [states[index] for index in decoding]
            for index, token in zip(decoding, self._batched_decode_step(batch), strict=True):
                tokens[index] = token
        return [tokens[index] for index in range(len(states))]

    def _batched_decode_step(self, states: list[DecodeState]) -> list[int | None]:
        caches = [state.cache.to_legacy_cache() for state in states]
        lengths = [layers[0][0].shape[2] for layers in caches]
        longest = max(lengths)

        def left_pad(tensor: torch.Tensor, length: int) -> torch.Tensor:
            pad = tensor.new_zeros(*tensor.shape[:2], longest - length, tensor.shape[3])
            return torch.cat([pad, tensor], dim=2)

        batched = tuple(
            (torch.cat([left_pad(cache[layer][0], length) for cache, length in zip(caches, lengths, strict=True)]),
             torch.cat([left_pad(cache[layer][1], length) for cache, length in zip(caches, lengths, strict=True)]))
            for layer in range(len(caches[0])))
        device = states[0].lm_input.device
        attention_mask = torch.zeros(len(states), longest + 1, dtype=torch.long, device=device)
        for row, length in enumerate(lengths):
            attention_mask[row, longest - length:] = 1
        from transformers import DynamicCache

        outputs = self.llm.llm.model(inputs_embeds=torch.cat([state.lm_input for state in states]),
                                     attention_mask=attention_mask,
                                     position_ids=torch.tensor([[length] for length in lengths], device=device),
                                     past_key_values=DynamicCache.from_legacy_cache(batched), use_cache=True,
                                     output_hidden_states=True, return_dict=True)
        logp = self.llm.llm_decoder(outputs.hidden_states[-1][:, -1]).log_softmax(dim=-1)
        new_cache = outputs.past_key_values.to_legacy_cache()
        tokens = []
        for row, (state, length) in enumerate(zip(states, lengths, strict=True)):
            start = longest - length  # drop this row's padding again
            state.cache = DynamicCache.from_legacy_cache(tuple(
                (keys[row:row + 1, :, start:].clone(), values[row:row + 1, :, start:].clone())
                for keys, values in new_cache))
            tokens.append(self._advance(state, logp[row]))
        return tokens

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
        """`Qwen2LM.sampling_ids` with the yaml's RAS sampling, drawing from the sequence's generator."""
        for _ in range(101):
            token = self.ras_sampling(logp, state.out_tokens, state.generator)
            if not ignore_eos or token != self.eos:
                return token
        raise RuntimeError("sampling kept producing end-of-speech while it was not allowed")

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
