"""What every benchmark command is given: which model, at which precision, on how many threads."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"expected an integer, not {text!r}") from exc
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {value}")
        return value
    return parse


positive_int = _int_at_least(1)


def add_common_arguments(parser: argparse.ArgumentParser, workload: bool = True) -> None:
    """The model options; with `workload`, also the seed and voice of the requests sent to the service."""
    parser.add_argument("--model-dir", help="CosyVoice2 model directory (default: the cached random-weight twin "
                                            "of --size, generated on first use)")
    parser.add_argument("--size", choices=["tiny", "real"], default="tiny",
                        help="which twin to use when --model-dir is not given (real: ~2 GB, generated once)")
    parser.add_argument("--dtype", choices=["auto", "fp32", "bf16"], default="auto",
                        help="precision of the LLM and flow decoder (auto: bf16 where the CPU runs it natively)")
    parser.add_argument("--torch-threads", type=_int_at_least(0), default=None,
                        help="torch threads per model replica of a started service, and of model code run in "
                             "this process; 0: the service's replicas share the node's cores per forward pass and "
                             "in-process code uses every core (default: the service's setting, "
                             "COSYVOICE_TORCH_THREADS or 1)")
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

    @property
    def inprocess_threads(self) -> int:
        """Threads of model code run in this process: the fixed count, else every core."""
        return self.torch_threads or len(os.sched_getaffinity(0))


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
                        torch_threads=Settings().torch_threads if args.torch_threads is None else args.torch_threads)
