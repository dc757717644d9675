"""Which model directory the service runs: the configured one, or a cached tiny twin."""

from __future__ import annotations

import fcntl
import logging
import shutil
import tempfile
from pathlib import Path

from tts_core.settings import DEFAULT_CACHE_DIR

logger = logging.getLogger(__name__)


def ensure_twin(cache_dir: str | Path = DEFAULT_CACHE_DIR, size: str = "tiny", seed: int = 0) -> Path:
    """The cached twin directory, generating it first if needed (safe across processes)."""
    from tts_model.twin import TWIN_VERSION, make_twin

    cache_dir = Path(cache_dir).expanduser()
    target = cache_dir / f"twin-v{TWIN_VERSION}-{size}-seed{seed}"
    if (target / ".complete").is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / ".complete").is_file():
            return target
        logger.warning("no model directory configured: generating the random-weight %s twin in %s", size, target)
        staging = Path(tempfile.mkdtemp(prefix=f".twin-{size}-", dir=cache_dir))
        try:
            make_twin(staging, size=size, seed=seed)
            (staging / ".complete").write_text("ok\n")
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve_model_dir(model_dir: str | None, cache_dir: str | Path = DEFAULT_CACHE_DIR) -> tuple[Path, bool]:
    """(model directory, whether it is the random-weight twin)."""
    if model_dir:
        return Path(model_dir).expanduser(), False
    return ensure_twin(cache_dir), True
