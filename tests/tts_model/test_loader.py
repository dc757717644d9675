"""Loading a CosyVoice2 model directory: the parts, and every error a user can act on."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tts_model.loader import ModelDirError, load_model, resolve_dtype


@pytest.fixture()
def model_copy(tiny_model_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))


def test_loads_every_part_of_the_twin(tiny_model) -> None:
    assert tiny_model.sample_rate == 24000
    assert type(tiny_model.llm).__name__ == "Qwen2LM"
    assert type(tiny_model.flow).__name__ == "CausalMaskedDiffWithXvec"
    assert type(tiny_model.hift).__name__ == "HiFTGenerator"
    assert tiny_model.sampling_params == {"top_p": 0.8, "top_k": 25, "win_size": 10, "tau_r": 0.1}
    assert len(tiny_model.tokenizer.encode("<|endofprompt|>")) == 1  # a special token, not split
    assert set(tiny_model.spk2info) >= {"pretrained_voice_001", "pretrained_voice_002"}


def test_loads_only_the_parts_asked_for(tiny_model_dir: Path) -> None:
    model = load_model(tiny_model_dir, parts=["hift"])
    assert model.hift is not None and model.llm is None and model.flow is None and model.tokenizer is None


def test_a_replica_loads_no_package_it_does_not_use(tiny_model_dir: Path) -> None:
    """transformers' optional scikit-learn and scipy integrations cost every replica that loads it
    (LLM, front end, flow) seconds of start-up; serving uses neither, so neither is imported."""
    script = (f"import sys\nfrom tts_model.loader import load_model\nload_model({str(tiny_model_dir)!r}, "
              "parts=['llm', 'frontend', 'flow'])\nprint('sklearn' in sys.modules)")
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True)
    assert completed.stdout.split()[-1] == "False"


def test_state_dicts_are_the_files(tiny_model, tiny_model_dir: Path) -> None:
    saved = torch.load(tiny_model_dir / "llm.pt", weights_only=True)
    for key, value in tiny_model.llm.state_dict().items():
        assert torch.equal(value, saved[key]), key


def test_backbone_weights_are_not_loaded_twice(model_copy: Path) -> None:
    # llm.pt holds every weight; the backbone checkpoint beside its config is never read.
    (model_copy / "CosyVoice-BlankEN" / "model.safetensors").write_bytes(b"not a checkpoint")
    assert load_model(model_copy, parts=["llm"]).llm is not None


def test_bf16_applies_to_llm_and_flow(tiny_model_dir: Path) -> None:
    model = load_model(tiny_model_dir, parts=["llm", "flow", "hift"], dtype="bf16")
    assert next(model.llm.parameters()).dtype == torch.bfloat16
    assert next(model.flow.parameters()).dtype == torch.bfloat16
    assert next(model.hift.parameters()).dtype == torch.float32


def test_auto_precision_is_bf16_only_where_native(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    assert resolve_dtype("fp32", cpu) == "fp32" and resolve_dtype("bf16", cpu) == "bf16"
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert resolve_dtype("auto", cpu) == "fp32"
    assert next(load_model(tiny_model_dir, parts=["flow"], dtype="auto").flow.parameters()).dtype == torch.float32
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert resolve_dtype("auto", cpu) == "bf16"
    assert next(load_model(tiny_model_dir, parts=["flow"], dtype="auto").flow.parameters()).dtype == torch.bfloat16


@pytest.mark.parametrize("name", ["flow.pt", "campplus.onnx", "CosyVoice-BlankEN/vocab.json"])
def test_missing_file_is_named(model_copy: Path, name: str) -> None:
    (model_copy / name).unlink()
    with pytest.raises(ModelDirError, match=name.replace(".", r"\.")):
        load_model(model_copy)


def test_missing_spk2info_means_no_pretrained_speakers(model_copy: Path) -> None:
    (model_copy / "spk2info.pt").unlink()
    assert load_model(model_copy, parts=["frontend"]).spk2info == {}


def test_mismatched_state_dict_names_the_keys(model_copy: Path) -> None:
    state = torch.load(model_copy / "flow.pt", weights_only=True)
    state.pop("encoder_proj.weight")
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, model_copy / "flow.pt")
    with pytest.raises(ModelDirError, match=r"missing keys: encoder_proj\.weight.*unexpected keys: extra\.weight"):
        load_model(model_copy, parts=["flow"])


def test_wrong_shapes_are_named(model_copy: Path) -> None:
    state = torch.load(model_copy / "hift.pt", weights_only=True)
    state["conv_pre.bias"] = torch.zeros(3)
    torch.save(state, model_copy / "hift.pt")
    with pytest.raises(ModelDirError, match=r"shape mismatches: conv_pre\.bias"):
        load_model(model_copy, parts=["hift"])


def test_cosyvoice1_directory_is_refused(model_copy: Path) -> None:
    (model_copy / "cosyvoice2.yaml").rename(model_copy / "cosyvoice.yaml")
    with pytest.raises(ModelDirError, match="CosyVoice1"):
        load_model(model_copy)


def test_cosyvoice3_directory_is_refused(model_copy: Path) -> None:
    (model_copy / "cosyvoice2.yaml").rename(model_copy / "cosyvoice3.yaml")
    with pytest.raises(ModelDirError, match="CosyVoice3"):
        load_model(model_copy)


def test_cosyvoice3_classes_in_cosyvoice2_yaml_are_refused(model_copy: Path) -> None:
    config = model_copy / "cosyvoice2.yaml"
    config.write_text(config.read_text().replace("cosyvoice.llm.llm.Qwen2LM", "cosyvoice.llm.llm.CosyVoice3LM"))
    with pytest.raises(ModelDirError, match="CosyVoice3"):
        load_model(model_copy)


def test_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelDirError, match="does not exist"):
        load_model(tmp_path / "nowhere")


@pytest.mark.slow
def test_real_size_twin_loads_through_the_real_yaml(tmp_path: Path) -> None:
    """The real-size twin uses the reference yaml unchanged (opt-in: `make test-slow`, ~2 GB)."""
    from importlib import resources

    from tts_model.twin import make_twin

    path = make_twin(tmp_path / "real", size="real", seed=0)
    real_yaml = (resources.files("tts_model") / "templates" / "cosyvoice2.yaml").read_text()
    assert (path / "cosyvoice2.yaml").read_text() == real_yaml
    model = load_model(path, dtype="bf16")
    assert sum(p.numel() for p in model.llm.parameters()) > 400e6
    assert sum(p.numel() for p in model.flow.parameters()) > 100e6
