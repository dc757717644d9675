"""The fidelity reference: upstream CosyVoice2 computed directly in this process.

Model inputs come from upstream's `CosyVoiceFrontEnd`, speech tokens from `Qwen2LM.inference`
(or `inference_bistream`, for text streamed in), and audio from upstream's
`CosyVoice2Model.token2wav` with its chunk schedule and caches, exactly as `CosyVoice2Model.tts`
drives them. The service adds one convention to make runs reproducible:
the LLM's sampling is seeded per text segment and HiFT's noise per chunk (`segment_seed`,
`chunk_seed`); the reference seeds torch's global RNG the same way at the same points.

The installed `cosyvoice` is an older snapshot; where current upstream changed the computation
the reference follows current upstream (`current_upstream_sampling_ids`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TypeVar

import numpy as np
import torch

from tts_model.chunk_schedule import chunk_seed, segment_seed
from tts_model.llm_decode import allowed_scores

T = TypeVar("T")


def upstream_frontend(model):
    from cosyvoice.cli.frontend import CosyVoiceFrontEnd

    return CosyVoiceFrontEnd(lambda: model.tokenizer, model.feat_extractor, str(model.model_dir / "campplus.onnx"),
                             str(model.model_dir / "speech_tokenizer_v2.onnx"), str(model.model_dir / "spk2info.pt"))


@contextlib.contextmanager
def current_upstream_sampling_ids(llm, speech_only: bool = False) -> Iterator[None]:
    """Current upstream's `Qwen2LM.sampling_ids`, which masks end-of-speech while it is not allowed
    (the installed snapshot resamples up to 100 times, then raises). `speech_only`, for
    `inference`: the special tokens after end-of-speech are masked too, as the service does
    (`SpeechTokenDecoder.sample`): `inference` has no use for them, a trained model gives them no
    mass, and the twin samples the fill token for the sake of `inference_bistream`."""
    def sampling_ids(weighted_scores, decoded_tokens, sampling, ignore_eos=True):
        scores = allowed_scores(weighted_scores, llm.speech_token_size, ignore_eos, speech_only)
        return llm.sampling(scores, decoded_tokens, sampling)

    llm.sampling_ids = sampling_ids
    try:
        yield
    finally:
        del llm.sampling_ids


def upstream_llm_tokens(llm, text, prompt_text, prompt_speech_token, seed: int) -> list[int]:
    """Upstream `Qwen2LM.inference` after `torch.manual_seed(seed)`."""
    torch.manual_seed(seed)
    with current_upstream_sampling_ids(llm, speech_only=True):
        return list(llm.inference(
            text=text, text_len=torch.tensor([text.shape[1]], dtype=torch.int32), prompt_text=prompt_text,
            prompt_text_len=torch.tensor([prompt_text.shape[1]], dtype=torch.int32),
            prompt_speech_token=prompt_speech_token,
            prompt_speech_token_len=torch.tensor([prompt_speech_token.shape[1]], dtype=torch.int32),
            embedding=torch.zeros(0, 192)))


def upstream_tts(model, model_input: dict, stream: bool, seed: int, segment: int = 0, speed: float = 1.0) -> list:
    """Upstream `CosyVoice2Model.tts` for one segment, run deterministically; returns the chunks."""
    empty_int = torch.zeros(1, 0, dtype=torch.int32)
    text = model_input["text"]
    prompt_text = model_input.get("prompt_text", empty_int)
    llm_prompt_speech = model_input.get("llm_prompt_speech_token", empty_int)

    tokens = upstream_llm_tokens(model.llm, text, prompt_text, llm_prompt_speech, segment_seed(seed, segment))
    return upstream_token2wav(model, model_input, tokens, stream, seed, segment, speed)


def upstream_bistream_tokens(model, text: list[int], prompt_text: list[int], prompt_speech: list[int],
                             seed: int) -> list[int]:
    """Upstream `Qwen2LM.inference_bistream` after `torch.manual_seed(seed)`, its text generator
    yielding one token at a time as upstream's frontend does."""
    def as_tensor(tokens: list[int]) -> torch.Tensor:
        return torch.tensor([tokens], dtype=torch.int32)

    pieces = (as_tensor([token]) for token in text)
    torch.manual_seed(seed)
    with current_upstream_sampling_ids(model.llm):
        return list(model.llm.inference_bistream(
            text=pieces, prompt_text=as_tensor(prompt_text),
            prompt_text_len=torch.tensor([len(prompt_text)], dtype=torch.int32),
            prompt_speech_token=as_tensor(prompt_speech),
            prompt_speech_token_len=torch.tensor([len(prompt_speech)], dtype=torch.int32),
            embedding=torch.zeros(0, 192)))


def finishing_seed(run: Callable[[int], T], tries: int = 40) -> tuple[int, T]:
    """The first seed with which an upstream bistream run finishes, and what it returned. With the
    random twin, upstream sometimes samples a fill token after the text has ended, where it raises."""
    for seed in range(tries):
        try:
            return seed, run(seed)
        except ValueError:
            continue
    raise AssertionError(f"upstream raised with each of {tries} seeds")


def upstream_bistream_tts(model, model_input: dict, seed: int, segment: int = 0) -> tuple[list[int], list]:
    """Upstream `CosyVoice2Model.tts` for text given as a generator (`model_input["text"]`, as upstream's
    frontend makes it from a generator of text pieces): `inference_bistream`, then streamed
    `token2wav`. Returns the speech tokens and the audio chunks."""
    empty_int = torch.zeros(1, 0, dtype=torch.int32)
    prompt_text = model_input.get("prompt_text", empty_int)
    llm_prompt_speech = model_input.get("llm_prompt_speech_token", empty_int)
    torch.manual_seed(segment_seed(seed, segment))
    with current_upstream_sampling_ids(model.llm):
        tokens = list(model.llm.inference_bistream(
            text=model_input["text"], prompt_text=prompt_text,
            prompt_text_len=torch.tensor([prompt_text.shape[1]], dtype=torch.int32),
            prompt_speech_token=llm_prompt_speech,
            prompt_speech_token_len=torch.tensor([llm_prompt_speech.shape[1]], dtype=torch.int32),
            embedding=torch.zeros(0, 192)))
    return tokens, upstream_token2wav(model, model_input, tokens, True, seed, segment)


def upstream_token2wav(model, model_input: dict, tokens: list[int], stream: bool, seed: int, segment: int = 0,
                       speed: float = 1.0) -> list:
    """Upstream `CosyVoice2Model.tts`'s audio side for one segment's speech tokens; returns the chunks."""
    from cosyvoice.cli.model import CosyVoice2Model

    empty_int = torch.zeros(1, 0, dtype=torch.int32)
    flow_prompt_speech = model_input.get("flow_prompt_speech_token", empty_int)
    prompt_feat = model_input.get("prompt_speech_feat", torch.zeros(1, 0, 80))
    embedding = model_input["flow_embedding"]
    upstream = CosyVoice2Model(None, model.flow, model.hift)
    uuid = "reference"
    upstream.hift_cache_dict[uuid] = None
    chunks, chunk = [], 0

    def token2wav(token_list, token_offset, stream_flag, finalize, speed=1.0):
        nonlocal chunk
        torch.manual_seed(chunk_seed(seed, segment, chunk))
        chunk += 1
        speech = upstream.token2wav(token=torch.tensor([token_list]), prompt_token=flow_prompt_speech,
                                    prompt_feat=prompt_feat, embedding=embedding, token_offset=token_offset,
                                    uuid=uuid, stream=stream_flag, finalize=finalize, speed=speed)
        chunks.append(speech[0].numpy())

    if stream:
        token_offset = 0
        pad = int(np.ceil(flow_prompt_speech.shape[1] / upstream.token_hop_len) * upstream.token_hop_len
                  - flow_prompt_speech.shape[1])
        while True:
            hop = upstream.token_hop_len + pad if token_offset == 0 else upstream.token_hop_len
            if len(tokens) - token_offset < hop + model.flow.pre_lookahead_len:
                break
            token2wav(tokens[:token_offset + hop + model.flow.pre_lookahead_len], token_offset, True, False)
            token_offset += hop
        token2wav(tokens, token_offset, False, True)
    else:
        token2wav(tokens, 0, False, True, speed)
    return chunks
