"""The HTTP edge, the pipeline, the two store actors and the inbox actor run without the model
stack: their processes never import torch (about 0.7 GB of resident memory each)."""

from __future__ import annotations

import subprocess
import sys

import pytest

TORCH_FREE_MODULES = ["serve_app.ingress", "serve_app.api.app", "deployments.pipeline", "deployments.voice_store",
                      "deployments.task_manager", "deployments.bistream_inbox", "tts_core.rendering",
                      "tts_core.storage.voice_codec", "tts_core.storage.task_codec", "tts_core.pcm_stream"]
MODEL_STACK = ["torch", "torchaudio", "transformers", "cosyvoice", "matcha"]


@pytest.mark.parametrize("module", TORCH_FREE_MODULES)
def test_module_never_imports_the_model_stack(module: str) -> None:
    probe = (f"import importlib, sys; importlib.import_module({module!r}); "
             f"print(','.join(name for name in {MODEL_STACK!r} if name in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "", f"importing {module} loads {loaded}"


def test_the_probe_sees_torch_when_it_is_imported() -> None:
    """The check above can fail: a module that imports torch is reported."""
    probe = "import sys, deployments.flow; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True).stdout.strip() == "True"
