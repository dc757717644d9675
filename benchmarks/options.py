"""What every benchmark command is given: which model, at which precision, on how many threads."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected an integer, not {text!r}") from exc
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def add_common_arguments(parser: argparse.ArgumentParser, workload: bool = True) -> None:
    """The model options; with `workload`, also the seed and voice of the requests sent to the service."""
    parser.add_argument("--model-dir", help="CosyVoice2 model directory (default: the cached random-weight twin "
                                            "of --size, generated on first use)")
    parser.add_argument("--size", choices=["tiny", "real"], default="tiny",
                        help="which twin to use when --model-dir is not given (real: ~2 GB, generated once)")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                        help="precision of the LLM and flow decoder")
    parser.add_argument("--torch-threads", type=positive_int, default=None,
                        help="torch threads per model replica of a started service, and of model code run in "
                             "this process (default: the service's setting, COSYVOICE_TORCH_THREADS or 1)")
    if workload:
        parser.add_argument("--seed", type=int, default=0, help="request i uses seed SEED + i")
        parser.add_argument("--voice", help="voice id to speak with (default: pretrained_voice_001, else the first "
                                            "pretrained voice the service lists)")


@dataclass
class ModelOptions:
    model_dir: Path
    #: The twin's size; None when --model-dir names the model.
    size: str | None
    dtype: str
    torch_threads: int


def model_options(args: argparse.Namespace, size: str | None = None) -> ModelOptions:
    """The model of --model-dir, else the twin of `size` (default: --size), generated on first use."""
    from tts_core.settings import Settings
    from tts_model.default_model import ensure_twin

    if args.model_dir:
        model_dir, size = Path(args.model_dir).expanduser().resolve(), None
    else:
        size = size or args.size
        model_dir = ensure_twin(size=size)
    return ModelOptions(model_dir=model_dir, size=size, dtype=args.dtype,
                        torch_threads=args.torch_threads or Settings().torch_threads)
