"""Load a CosyVoice2-0.5B model directory, unchanged, into the upstream module classes.

The directory's own `cosyvoice2.yaml` is the source of truth for every class and dimension.
Only the sections that serving needs are built from it: the real file also instantiates
training-only objects (GAN discriminators, dataset processors importing pyworld/pyarrow...).
Each deployment asks only for the parts it runs, so an LLM replica never holds the vocoder.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from tts_model import matcha_compat  # noqa: F401  (must precede the cosyvoice imports)

logger = logging.getLogger(__name__)

Part = Literal["llm", "flow", "hift", "frontend"]
ALL_PARTS: tuple[Part, ...] = ("llm", "flow", "hift", "frontend")

CONFIG_NAME = "cosyvoice2.yaml"
QWEN_DIR_NAME = "CosyVoice-BlankEN"
SPK2INFO_NAME = "spk2info.pt"
#: What each part reads from the model directory (spk2info.pt is optional).
PART_FILES: dict[Part, tuple[str, ...]] = {
    "llm": ("llm.pt", f"{QWEN_DIR_NAME}/config.json"),
    "flow": ("flow.pt",),
    "hift": ("hift.pt",),
    "frontend": ("campplus.onnx", "speech_tokenizer_v2.onnx", f"{QWEN_DIR_NAME}/vocab.json",
                 f"{QWEN_DIR_NAME}/merges.txt"),
}
#: Top-level yaml sections each part instantiates.
PART_SECTIONS: dict[Part, tuple[str, ...]] = {
    "llm": ("llm",),
    "flow": ("flow",),
    "hift": ("hift",),
    "frontend": ("get_tokenizer", "feat_extractor"),
}
#: Class names that identify the other CosyVoice generations in a yaml.
OTHER_GENERATIONS = {
    "CosyVoice3LM": "CosyVoice3",
    "CausalMaskedDiffWithDiT": "CosyVoice3",
    "CausalHiFTGenerator": "CosyVoice3",
    "cosyvoice.llm.llm.TransformerLM": "CosyVoice1 (CosyVoice-300M)",
    "cosyvoice.flow.flow.MaskedDiffWithXvec": "CosyVoice1 (CosyVoice-300M)",
}

#: transformers' flags for optional packages whose features serving never uses: scikit-learn (the
#: thresholds of assisted generation) and scipy (object-detection losses). Where they are installed
#: (librosa brings both), transformers imports them with Qwen2 and AutoTokenizer: about 1.7 s of CPU
#: in each replica that loads transformers, and the replicas load at once.
UNUSED_TRANSFORMERS_EXTRAS = ("_sklearn_available", "_scipy_available")

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class ModelDirError(ValueError):
    """A model directory that cannot be served, with a message a user can act on."""


@dataclass
class CosyVoice2Model:
    """The parts of a CosyVoice2 model that one process asked for (others are None)."""

    model_dir: Path
    device: torch.device
    dtype: torch.dtype
    sample_rate: int
    token_frame_rate: int
    token_mel_ratio: int
    chunk_size: int
    llm: Any = None
    flow: Any = None
    hift: Any = None
    tokenizer: Any = None
    feat_extractor: Callable[[torch.Tensor], torch.Tensor] | None = None
    campplus: Any = None
    speech_tokenizer: Any = None
    spk2info: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: The `sampling` keyword arguments of the LLM section (top_p, top_k, win_size, tau_r).
    sampling_params: dict[str, float] = field(default_factory=dict)


def detect_generation(model_dir: Path) -> None:
    """Refuse directories of other CosyVoice generations, naming which one they are."""
    config = model_dir / CONFIG_NAME
    if not config.is_file():
        if (model_dir / "cosyvoice3.yaml").is_file():
            raise ModelDirError(f"{model_dir} is a CosyVoice3 model directory (cosyvoice3.yaml); "
                                "this server serves CosyVoice2 (e.g. CosyVoice2-0.5B) only")
        if (model_dir / "cosyvoice.yaml").is_file():
            raise ModelDirError(f"{model_dir} is a CosyVoice1 model directory (cosyvoice.yaml); "
                                "this server serves CosyVoice2 (e.g. CosyVoice2-0.5B) only")
        raise ModelDirError(f"missing file {CONFIG_NAME} in model directory {model_dir}")
    text = config.read_text(encoding="utf-8")
    for marker, generation in OTHER_GENERATIONS.items():
        if re.search(rf"!new:\S*{re.escape(marker)}\b", text):
            raise ModelDirError(f"{config} describes a {generation} model ({marker}); "
                                "this server serves CosyVoice2 (e.g. CosyVoice2-0.5B) only")


def check_files(model_dir: Path, parts: Iterable[Part]) -> None:
    missing = [name for part in parts for name in PART_FILES[part] if not (model_dir / name).is_file()]
    if missing:
        raise ModelDirError(f"missing file{'s' if len(missing) > 1 else ''} in model directory {model_dir}: "
                            + ", ".join(dict.fromkeys(missing)))


def top_level_blocks(yaml_text: str) -> list[tuple[str | None, str]]:
    """Split a yaml document into (key, text) blocks, one per top-level entry (key None: comments)."""
    blocks: list[tuple[str | None, list[str]]] = [(None, [])]
    for line in yaml_text.splitlines(keepends=True):
        match = re.match(r"^([A-Za-z_][\w]*)\s*:", line)
        if match:
            blocks.append((match.group(1), [line]))
        else:
            blocks[-1][1].append(line)
    return [(key, "".join(lines)) for key, lines in blocks]


def select_sections(yaml_text: str, sections: Iterable[str]) -> str:
    """Keep the plain scalar settings plus the named sections of a hyperpyyaml document.

    Sections are top-level keys; scalars (`sample_rate: 24000`) are kept because sections refer
    to them with `!ref`. Tagged entries not asked for (`!new:`, `!name:`, `!apply:`) are dropped,
    so their classes are never imported or built.
    """
    wanted = set(sections)
    kept = []
    for key, block in top_level_blocks(yaml_text):
        if key is None:
            continue
        first_line = block.split("\n", 1)[0]
        value = first_line.split(":", 1)[1].split("#", 1)[0].strip()
        continuation = [line for line in block.splitlines()[1:] if line.strip() and not line.lstrip().startswith("#")]
        is_plain_scalar = value != "" and not value.startswith(("!", "[", "{")) and not continuation
        if key in wanted or is_plain_scalar:
            kept.append(block if block.endswith("\n") else block + "\n")
    missing = wanted - {key for key, _ in top_level_blocks(yaml_text)}
    if missing:
        raise ModelDirError(f"{CONFIG_NAME} has no section(s): {', '.join(sorted(missing))}")
    return "".join(kept)


def skip_unused_transformers_extras() -> None:
    """Tell transformers that the packages of `UNUSED_TRANSFORMERS_EXTRAS` are absent, before any
    of its modelling or tokenizer code is imported (the LLM, the front end's tokenizer, and the
    flow, whose upstream modules import the LLM's)."""
    from transformers.utils import import_utils

    for flag in UNUSED_TRANSFORMERS_EXTRAS:
        if not hasattr(import_utils, flag):
            raise RuntimeError(f"transformers has no {flag}: review UNUSED_TRANSFORMERS_EXTRAS for this version")
        setattr(import_utils, flag, False)


@contextlib.contextmanager
def qwen_from_config_only() -> Iterator[None]:
    """Build `Qwen2Encoder`'s Qwen2 skeleton from its config instead of loading its weights.

    `Qwen2Encoder.__init__` calls `Qwen2ForCausalLM.from_pretrained(CosyVoice-BlankEN)`, and
    `llm.pt` then overwrites every one of those weights: loading them first doubles load time
    and peak memory. Within this context the encoder gets an uninitialised model of the same
    config; `llm.pt` fills it.
    """
    import cosyvoice.llm.llm as upstream_llm
    import transformers.modeling_utils
    from transformers import AutoConfig, Qwen2ForCausalLM
    from transformers.modeling_utils import no_init_weights

    class _SkeletonQwen2ForCausalLM(Qwen2ForCausalLM):
        @classmethod
        def from_pretrained(cls, path: str, *args: Any, **kwargs: Any) -> Qwen2ForCausalLM:
            config = AutoConfig.from_pretrained(path)
            # Leaving a nested `no_init_weights` would turn initialisation back on for the rest of an outer one.
            skipping = (contextlib.nullcontext() if not transformers.modeling_utils._init_weights
                        else no_init_weights())
            with skipping:
                return Qwen2ForCausalLM(config)

    original = upstream_llm.Qwen2ForCausalLM
    upstream_llm.Qwen2ForCausalLM = _SkeletonQwen2ForCausalLM
    try:
        yield
    finally:
        upstream_llm.Qwen2ForCausalLM = original


#: torch's weight initialisers that modules call as they are built (the ones transformers'
#: `no_init_weights` skips; `zeros_`/`ones_` are cheap and left alone).
_INITIALISERS = ("uniform_", "normal_", "trunc_normal_", "constant_", "xavier_uniform_", "xavier_normal_",
                 "kaiming_uniform_", "kaiming_normal_", "uniform", "normal", "xavier_uniform", "xavier_normal",
                 "kaiming_uniform", "kaiming_normal")


@contextlib.contextmanager
def uninitialised_modules(with_qwen: bool) -> Iterator[None]:
    """Build modules without initialising their weights, which their checkpoints then overwrite.

    Drawing random values for the LLM's half a billion weights alone takes seconds of start-up, so
    torch's initialisers do nothing within this context; `with_qwen` (the LLM part) also builds
    Qwen2 from its config only (`qwen_from_config_only`). Every weight is then loaded, strictly,
    so none is left uninitialised.
    """
    if with_qwen:
        # transformers' switch also skips Qwen2's own initialisation, and the skeleton sees it is on.
        from transformers.modeling_utils import no_init_weights

        with qwen_from_config_only(), no_init_weights():
            yield
        return
    originals = {name: getattr(torch.nn.init, name) for name in _INITIALISERS if hasattr(torch.nn.init, name)}

    def skip(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return tensor

    for name in originals:
        setattr(torch.nn.init, name, skip)
    try:
        yield
    finally:
        for name, initialiser in originals.items():
            setattr(torch.nn.init, name, initialiser)


def load_state_dict_strictly(module: torch.nn.Module, path: Path, in_place: bool = True) -> None:
    """Load a checkpoint, naming the first offending keys if it does not match the module.

    `in_place`: the checkpoint is mapped from its file and its tensors become the module's (no
    copy into the module's own; the pages are read as they are first used), instead of being read
    whole into memory and copied into the module, which costs the time of a second copy and
    leaves the first one's pages in the allocator.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=in_place)
    except Exception as exc:  # corrupt or not a torch file
        raise ModelDirError(f"cannot read {path.name}: {exc}") from exc
    if not isinstance(state, dict):
        raise ModelDirError(f"{path.name} does not hold a state dict")
    # Upstream saves HiFT inside its HiFiGan wrapper, so its keys may carry a `generator.` prefix.
    state = {key.removeprefix("generator."): value for key, value in state.items()}
    expected = module.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    mismatched = [f"{key} {tuple(state[key].shape)} != {tuple(value.shape)}" for key, value in expected.items()
                  if key in state and tuple(state[key].shape) != tuple(value.shape)]
    problems = []
    if missing:
        problems.append(f"missing keys: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}")
    if mismatched:
        problems.append(f"shape mismatches: {', '.join(mismatched[:5])}{' ...' if len(mismatched) > 5 else ''}")
    if problems:
        raise ModelDirError(f"{path.name} does not match the model built from {CONFIG_NAME}: " + "; ".join(problems))
    module.load_state_dict(state, strict=True, assign=in_place)


def onnx_session(path: Path, device: torch.device) -> Any:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = 1
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        return onnxruntime.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:
        raise ModelDirError(f"cannot open {path.name}: {exc}") from exc


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelDirError(f"device {device!r} requested but no CUDA device is available")
    return torch.device(device)


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 matrix work runs natively: CUDA with bf16, or a CPU with AVX512-BF16 or AMX.
    Elsewhere (AVX2 CPUs) torch emulates bf16, many times slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def resolve_dtype(dtype: str, device: torch.device) -> str:
    """`auto` is bf16 where it is native (see `native_bf16`), fp32 elsewhere; other values stand."""
    if dtype != "auto":
        return dtype
    return "bf16" if native_bf16(device) else "fp32"


def load_model(model_dir: str | Path, parts: Iterable[Part] = ALL_PARTS, device: str = "cpu",
               dtype: str = "fp32", upstream_loading: bool = False) -> CosyVoice2Model:
    """Build and load the requested parts of the CosyVoice2 model in `model_dir`.

    `dtype` (fp32, bf16, fp16 or auto) applies to the LLM and the flow decoder; HiFT and the ONNX
    front end stay fp32, as upstream runs them.

    The modules are built without initialising their weights (every one is then loaded from its
    checkpoint, strictly), and the checkpoints are mapped in place (`load_state_dict_strictly`).
    `upstream_loading` loads as upstream's `CosyVoice2` does instead, for the benchmark's
    baseline: modules initialised at random, Qwen2's pretrained weights read from
    `CosyVoice-BlankEN` where present, then every checkpoint read whole and copied in.
    """
    from hyperpyyaml import load_hyperpyyaml

    model_dir = Path(model_dir).expanduser().resolve()
    if not model_dir.is_dir():
        raise ModelDirError(f"model directory {model_dir} does not exist")
    torch_device = resolve_device(device)
    dtype = resolve_dtype(dtype, torch_device)
    if dtype not in DTYPES:
        raise ModelDirError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    parts = tuple(dict.fromkeys(parts))
    detect_generation(model_dir)
    check_files(model_dir, parts)
    torch_dtype = DTYPES[dtype]

    if not upstream_loading and set(parts) - {"hift"}:  # the vocoder's modules alone do not import transformers
        skip_unused_transformers_extras()
    yaml_text = (model_dir / CONFIG_NAME).read_text(encoding="utf-8")
    sections = [section for part in parts for section in PART_SECTIONS[part]]
    building = contextlib.nullcontext() if upstream_loading else uninitialised_modules(with_qwen="llm" in parts)
    with building:
        config = load_hyperpyyaml(select_sections(yaml_text, sections),
                                  overrides={"qwen_pretrain_path": str(model_dir / QWEN_DIR_NAME)})

    model = CosyVoice2Model(model_dir=model_dir, device=torch_device, dtype=torch_dtype,
                            sample_rate=int(config["sample_rate"]), token_frame_rate=int(config["token_frame_rate"]),
                            token_mel_ratio=int(config["token_mel_ratio"]), chunk_size=int(config["chunk_size"]))
    if "llm" in parts:
        load_state_dict_strictly(config["llm"], model_dir / "llm.pt", in_place=not upstream_loading)
        model.llm = config["llm"].to(torch_device, torch_dtype).eval()
        model.sampling_params = dict(getattr(model.llm.sampling, "keywords", {}))
    if "flow" in parts:
        load_state_dict_strictly(config["flow"], model_dir / "flow.pt", in_place=not upstream_loading)
        model.flow = config["flow"].to(torch_device, torch_dtype).eval()
    if "hift" in parts:
        load_state_dict_strictly(config["hift"], model_dir / "hift.pt", in_place=not upstream_loading)
        model.hift = config["hift"].to(torch_device).eval()
    if "frontend" in parts:
        model.tokenizer = config["get_tokenizer"]()
        model.feat_extractor = config["feat_extractor"]
        model.campplus = onnx_session(model_dir / "campplus.onnx", torch_device)
        model.speech_tokenizer = onnx_session(model_dir / "speech_tokenizer_v2.onnx", torch_device)
        model.spk2info = load_spk2info(model_dir / SPK2INFO_NAME)
    logger.info("loaded %s from %s on %s (%s)", "+".join(parts), model_dir, torch_device, dtype)
    return model


def load_spk2info(path: Path) -> dict[str, dict[str, Any]]:
    """The model's built-in speakers; CosyVoice2-0.5B ships none (the file may be absent)."""
    if not path.is_file():
        return {}
    try:
        speakers = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelDirError(f"cannot read {path.name}: {exc}") from exc
    if not isinstance(speakers, dict):
        raise ModelDirError(f"{path.name} must hold a dict of speaker id -> features")
    return speakers
