"""Session-wide fixtures: one tiny twin per test session, shared by every test."""

from __future__ import annotations

import time
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tts_model.twin import make_twin

    started = time.perf_counter()
    path = make_twin(tmp_path_factory.mktemp("models") / "tiny", size="tiny", seed=0)
    (path / ".build_seconds").write_text(f"{time.perf_counter() - started:.2f}\n")
    return path


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir: Path):
    from tts_model.loader import load_model

    return load_model(tiny_model_dir)
