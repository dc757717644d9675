"""The random-weight twin: real layout, real yaml structure, deterministic, small and fast."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import torch

from tts_model.loader import top_level_blocks
from tts_model.twin import PRETRAINED_SPEAKERS, directory_size, make_twin

REAL_LAYOUT = {
    "cosyvoice2.yaml", "llm.pt", "flow.pt", "hift.pt", "campplus.onnx", "speech_tokenizer_v2.onnx", "spk2info.pt",
    "CosyVoice-BlankEN/config.json", "CosyVoice-BlankEN/generation_config.json", "CosyVoice-BlankEN/merges.txt",
    "CosyVoice-BlankEN/model.safetensors", "CosyVoice-BlankEN/tokenizer_config.json", "CosyVoice-BlankEN/vocab.json",
}


def files_of(path: Path) -> set[str]:
    return {str(file.relative_to(path)) for file in path.rglob("*") if file.is_file() and not file.name.startswith(".")}


def test_layout_is_the_real_model_directory(tiny_model_dir: Path) -> None:
    assert files_of(tiny_model_dir) == REAL_LAYOUT


def test_yaml_keeps_the_real_structure_and_classes(tiny_model_dir: Path) -> None:
    real = (resources.files("tts_model") / "templates" / "cosyvoice2.yaml").read_text()
    twin = (tiny_model_dir / "cosyvoice2.yaml").read_text()
    assert [key for key, _ in top_level_blocks(twin)] == [key for key, _ in top_level_blocks(real)]
    assert re.findall(r"![a-z]+:[\w.]+", twin) == re.findall(r"![a-z]+:[\w.]+", real)
    real_lines, twin_lines = real.splitlines(), twin.splitlines()
    assert len(real_lines) == len(twin_lines)
    differing = [(a, b) for a, b in zip(real_lines, twin_lines, strict=True) if a != b]
    # Only numbers change, key by key.
    assert differing and all(a.split(":")[0] == b.split(":")[0] for a, b in differing)
    assert all(re.fullmatch(r"[\d\[\], ]+", b.split(":", 1)[1].split("#")[0].strip()) for _, b in differing)


def test_tiny_twin_is_small_and_fast(tiny_model_dir: Path, record_property) -> None:
    size = directory_size(tiny_model_dir)
    seconds = float((tiny_model_dir / ".build_seconds").read_text())
    record_property("tiny_twin_bytes", size)
    record_property("tiny_twin_build_seconds", seconds)
    print(f"tiny twin: {size / 1e6:.1f} MB built in {seconds:.1f} s")
    assert size < 100 * 1024 * 1024
    assert seconds < 30


def test_same_seed_same_bytes_other_seed_other_weights(tiny_model_dir: Path, tmp_path: Path) -> None:
    again = make_twin(tmp_path / "again", size="tiny", seed=0)
    other = make_twin(tmp_path / "other", size="tiny", seed=1)
    for name in ("llm.pt", "flow.pt", "hift.pt"):
        assert (again / name).read_bytes() == (tiny_model_dir / name).read_bytes(), name
        assert (other / name).read_bytes() != (tiny_model_dir / name).read_bytes(), name


def test_pretrained_speakers_hold_what_sft_and_instruct_need(tiny_model_dir: Path) -> None:
    speakers = torch.load(tiny_model_dir / "spk2info.pt", weights_only=True)
    assert set(PRETRAINED_SPEAKERS) <= set(speakers) and len(speakers) >= 2
    for entry in speakers.values():
        assert entry["embedding"].shape == (1, 192)
        tokens, feat = entry["flow_prompt_speech_token"], entry["prompt_speech_feat"]
        assert tokens.shape[1] > 0 and feat.shape == (1, 2 * tokens.shape[1], 80)
        assert entry["prompt_text"].shape[1] > 0
