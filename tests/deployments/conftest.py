"""Fixtures of the deployment tests: the frontend's handle and a prompt recording."""

from __future__ import annotations

import numpy as np
import pytest

from tts_core.synthetic_speech import speech_like
from tts_model.frontend import PROMPT_SAMPLE_RATE


@pytest.fixture(scope="module")
def frontend_handle(serve_cluster):
    from ray import serve

    return serve.get_deployment_handle("TextFrontendDeployment", app_name=serve_cluster["app_name"])


@pytest.fixture(scope="module")
def prompt_16k() -> np.ndarray:
    """A 3 s voiced prompt at 16 kHz."""
    return speech_like(3.0, PROMPT_SAMPLE_RATE, 180.0, np.random.default_rng(5))
