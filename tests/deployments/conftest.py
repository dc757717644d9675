"""Fixtures of the deployment tests: the frontend's handle, a prompt recording and two replicas' core budgets."""

from __future__ import annotations

import os
import uuid

import numpy as np
import pytest
import torch

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


@pytest.fixture
def budgets():
    """Two replicas' budgets on one node of 4 cores (the second stands for another process);
    torch's thread count, which a forward pass sets, is restored after."""
    from deployments.core_budget import CoreBudget

    name, threads = f"test-{uuid.uuid4().hex}", torch.get_num_threads()
    mine, other = CoreBudget(name, cores=4), CoreBudget(name, cores=4)
    other.pid = os.getppid()  # a live process that is not this one
    yield mine, other
    torch.set_num_threads(threads)
    mine.path.unlink(missing_ok=True)
