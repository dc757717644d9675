"""What every model-holding deployment does at start-up: resolve and load its part of the model."""

from __future__ import annotations

import logging

import torch

from serve_app.settings import Settings
from tts_model.default_model import resolve_model_dir
from tts_model.loader import CosyVoice2Model, Part, load_model

logger = logging.getLogger("ray.serve")


def load_stage(settings: Settings, parts: list[Part], device: str | None = None) -> tuple[CosyVoice2Model, bool]:
    """Load `parts` of the configured model (the cached tiny twin if none is configured).

    Returns the model and whether it is the random-weight twin. Ray gives replicas with
    fractional CPUs OMP_NUM_THREADS=1, so torch's thread count is set explicitly.
    """
    torch.set_num_threads(settings.torch_threads)
    model_dir, is_twin = resolve_model_dir(settings.model_dir, settings.model_cache_dir)
    if is_twin:
        logger.warning("serving the random-weight CosyVoice2 twin at %s (set COSYVOICE_MODEL_DIR for real weights)",
                       model_dir)
    return load_model(model_dir, parts=parts, device=device or settings.device, dtype=settings.dtype), is_twin
