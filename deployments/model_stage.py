"""What every model-holding deployment does at start-up: resolve and load its part of the model."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future
from functools import partial
from typing import Any, TypeVar

#: Entries kept by each shape-keyed cache of CPU convolution kernels in a model replica (oneDNN's
#: primitive cache and ideep's computation cache, 1024 each by default). The flow decoder and the
#: vocoder meet a new input length on almost every request; with full-size caches the churn of
#: long-lived kernel allocations fragments glibc's heap and RSS keeps growing although the memory
#: in use does not. 128 holds every convolution of one forward pass (README: memory soak).
KERNEL_CACHE_CAPACITY = 128

# ideep reads its variable when libtorch is loaded, so these are set before torch is imported:
# every model deployment imports this module before anything that imports torch, and a replica is
# a fresh process (in a driver that imported torch first, only oneDNN's cap applies). Values
# already in the environment (e.g. a deployment's runtime_env) are kept.
for _name in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY"):
    os.environ.setdefault(_name, str(KERNEL_CACHE_CAPACITY))

import torch  # noqa: E402

from deployments.core_budget import CoreBudget  # noqa: E402
from deployments.replica_logging import quiet_health_checks  # noqa: E402
from tts_core.settings import Settings  # noqa: E402
from tts_model.default_model import resolve_model_dir  # noqa: E402
from tts_model.loader import DTYPES, CosyVoice2Model, Part, load_model  # noqa: E402

logger = logging.getLogger("ray.serve")

T = TypeVar("T")


def load_stage(settings: Settings, parts: list[Part], device: str | None = None) -> tuple[CosyVoice2Model, bool]:
    """Load `parts` of the configured model (the cached tiny twin if none is configured).

    Returns the model and whether it is the random-weight twin. Ray gives replicas with
    fractional CPUs OMP_NUM_THREADS=1, so torch's thread count is set explicitly (with
    `torch_threads: 0`, per forward pass by the replica's `core_budget`).
    """
    quiet_health_checks()
    torch.set_num_threads(settings.torch_threads or 1)
    model_dir, is_twin = resolve_model_dir(settings.model_dir, settings.model_cache_dir)
    if is_twin:
        logger.warning("serving the random-weight CosyVoice2 twin at %s (set COSYVOICE_MODEL_DIR for real weights)",
                       model_dir)
    model = load_model(model_dir, parts=parts, device=device or settings.device, dtype=settings.dtype)
    if any(part in parts for part in ("llm", "flow")):
        logger.info("precision of %s on %s: %s (setting: %s)", "+".join(parts), model.device, precision(model),
                    settings.dtype)
    return model, is_twin


def precision(model: CosyVoice2Model) -> str:
    """The name of the dtype the LLM and flow run in."""
    return next(name for name, dtype in DTYPES.items() if dtype == model.dtype)


def core_budget(settings: Settings) -> CoreBudget | None:
    """The node's shared cores, when the thread count is not fixed by `torch_threads`."""
    return None if settings.torch_threads else CoreBudget(settings.app_name)


def forward_pass(budget: CoreBudget | None, limit: int | None = None, urgent: bool = False,
                 yields: bool = False) -> contextlib.AbstractContextManager:
    """Around one forward pass: its share of the node's cores (at most `limit`), or the fixed
    thread count; `urgent` and `yields` as `CoreBudget.forward` has them."""
    return budget.forward(limit, urgent, yields) if budget is not None else contextlib.nullcontext()


class ModelThread:
    """The one thread that runs a replica's forward passes, off its event loop (so calls keep
    queueing into the next batch). One thread, not a pool: warm kernel caches and one malloc
    arena, and never two forwards into one model copy at a time.

    Waiting passes run in arrival order, but `urgent` ones first: a stream's first chunk, which a
    listener is waiting on, goes ahead of chunks of streams already playing, and the LLM's
    replicas on the node wait while it runs (`CoreBudget`)."""

    def __init__(self, budget: CoreBudget | None) -> None:
        self.budget = budget
        self.queue: list[tuple[bool, int, Future, Callable[[], Any]]] = []  # a heap: urgent first, then oldest
        self.arrivals = itertools.count()
        self.waiting = threading.Condition()
        threading.Thread(target=self._serve, name="model", daemon=True).start()

    async def run(self, function: Callable[..., T], *args: Any, urgent: bool = False) -> T:
        future: Future = Future()
        with self.waiting:
            heapq.heappush(self.queue, (not urgent, next(self.arrivals), future, partial(function, *args)))
            self.waiting.notify()
        # Cancelling the caller cancels the pass if it has not started (as an executor's would).
        return await asyncio.wrap_future(future)

    def rebalance(self) -> None:
        """Between two parts of a long pass: resize its threads to the cores free now."""
        if self.budget is not None:
            self.budget.rebalance()

    def _serve(self) -> None:
        while True:
            with self.waiting:
                while not self.queue:
                    self.waiting.wait()
                not_urgent, _, future, call = heapq.heappop(self.queue)
            if not future.set_running_or_notify_cancel():
                continue
            try:
                with forward_pass(self.budget, urgent=not not_urgent):
                    result = call()
            except BaseException as exc:  # handed to the caller, as an executor does
                future.set_exception(exc)
            else:
                future.set_result(result)
