"""Fixtures of the deployment tests: the frontend's handle and a prompt recording."""

from __future__ import annotations

import numpy as np
import pytest

from tts_model.twin import _synthetic_prompt


@pytest.fixture(scope="module")
def frontend_handle(serve_cluster):
    from ray import serve

    return serve.get_deployment_handle("TextFrontendDeployment", app_name=serve_cluster["app_name"])


@pytest.fixture(scope="module")
def prompt_16k() -> np.ndarray:
    """A 3 s voiced prompt at 16 kHz."""
    return _synthetic_prompt(3.0, 180.0, np.random.default_rng(5))
