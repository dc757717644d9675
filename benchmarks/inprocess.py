"""The service's pipeline path called in-process: what HTTP and Ray add is measured against it.

The same functions the deployments call (`TextFrontend`, `VoiceFeatureExtractor`,
`SpeechTokenDecoder`, `flow_mel`, `vocode`, the audio decoder and WAV encoder), with the same
seeds, so a request gives exactly the audio the service gives for it, and with the replicas' torch
thread count. Service latency minus this latency, for the same request, is the per-request cost of
HTTP, the proxy and the deployment hops.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from benchmarks.workload import BenchRequest, RequestResult, Speaker


class InProcessPipeline:
    """The service's whole-mode path as plain function calls: no HTTP, no Ray."""

    def __init__(self, model: Any, speaker: Speaker):
        from tts_model.frontend import TextFrontend, VoiceFeatureExtractor
        from tts_model.llm_decode import SpeechTokenDecoder

        self.model = model
        self.speaker = speaker
        self.frontend = TextFrontend(model.tokenizer)
        self.voices = VoiceFeatureExtractor(model)
        self.decoder = SpeechTokenDecoder(model.llm, model.sampling_params)

    def mode_inputs(self) -> Any:
        """sft: the pretrained voice's embedding; zero-shot: the uploaded prompt decoded and its
        features extracted, as the ingress and the front end do for every such request."""
        from tts_core.audio import decode_audio
        from tts_core.modes import SynthesisMode, mode_inputs
        from tts_model.frontend import voice_from_spk2info

        if self.speaker.workload == "sft":
            return mode_inputs(SynthesisMode.SFT, voice_from_spk2info(self.model.spk2info[self.speaker.voice_id]))
        prompt = decode_audio(self.speaker.prompt_wav)
        speech_16k = self.voices.to_prompt_rate(prompt.samples, prompt.sample_rate)
        voice = self.voices.extract(speech_16k, self.frontend.prompt_tokens(self.speaker.prompt_text))
        return mode_inputs(SynthesisMode.ZERO_SHOT, voice)

    def request(self, request: BenchRequest) -> RequestResult:
        from tts_core.audio import encode_audio
        from tts_core.wire import SpeechTokenRequest
        from tts_model.chunk_schedule import chunk_seed, segment_seed
        from tts_model.flow_decode import flow_mel
        from tts_model.vocode import vocode

        started = time.perf_counter()
        inputs = self.mode_inputs()
        segments = [tokens for tokens in map(self.frontend.tokenize, self.frontend.normalize(request.text)) if tokens]
        pieces = []
        for index, text_token in enumerate(segments):
            state = self.decoder.start(SpeechTokenRequest(
                text_token=text_token, prompt_text_token=inputs.llm_prompt_text,
                prompt_speech_token=inputs.llm_prompt_speech, seed=segment_seed(request.seed, index)))
            while not state.finished:
                self.decoder.step(state)
            mel = flow_mel(self.model.flow, state.out_tokens, inputs.flow_prompt, 0, False, True,
                           self.model.token_mel_ratio)
            pcm, _ = vocode(self.model.hift, mel, None, True, 1.0, chunk_seed(request.seed, index, 0))
            pieces.append(pcm)
        samples = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
        encode_audio(samples, self.model.sample_rate, "wav")  # the service answers with a stored WAV
        latency = time.perf_counter() - started
        return RequestResult(index=request.index, latency_s=latency, ttfa_s=latency,
                             audio_s=len(samples) / self.model.sample_rate)


def load_inprocess(model_dir: str, dtype: str, speaker: Speaker, torch_threads: int) -> InProcessPipeline:
    import torch

    from tts_model.loader import load_model

    torch.set_num_threads(torch_threads)
    return InProcessPipeline(load_model(model_dir, dtype=dtype), speaker)
