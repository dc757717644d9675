"""A replica's forward passes run one at a time, in arrival order but urgent ones first."""

from __future__ import annotations

import asyncio
import contextlib
import threading

import pytest

from deployments.model_stage import ModelThread


async def _busy(worker: ModelThread) -> tuple[threading.Event, asyncio.Future]:
    """A pass that holds the model thread until the event is set."""
    gate = threading.Event()
    running = threading.Event()

    def hold() -> None:
        running.set()
        gate.wait()

    busy = asyncio.ensure_future(worker.run(hold))
    while not running.is_set():
        await asyncio.sleep(0.01)
    return gate, busy


def test_an_urgent_pass_goes_ahead_of_those_waiting() -> None:
    async def scenario() -> list[str]:
        worker, order = ModelThread(None), []
        gate, busy = await _busy(worker)
        waiting = [asyncio.ensure_future(worker.run(order.append, name)) for name in ("first", "second")]
        urgent = asyncio.ensure_future(worker.run(order.append, "urgent", urgent=True))
        await asyncio.sleep(0.05)  # every call is queued behind the busy pass
        gate.set()
        await asyncio.gather(busy, *waiting, urgent)
        return order

    assert asyncio.run(scenario()) == ["urgent", "first", "second"]


def test_a_pass_whose_caller_went_away_before_it_started_never_runs() -> None:
    async def scenario() -> list[str]:
        worker, ran = ModelThread(None), []
        gate, busy = await _busy(worker)
        abandoned = asyncio.ensure_future(worker.run(ran.append, "abandoned"))
        await asyncio.sleep(0.05)
        abandoned.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await abandoned  # its caller is gone before the busy pass ends
        gate.set()
        await busy
        await worker.run(ran.append, "next")
        return ran

    assert asyncio.run(scenario()) == ["next"]


def test_a_failing_pass_fails_its_caller_and_the_thread_serves_on() -> None:
    async def scenario() -> int:
        worker = ModelThread(None)
        with pytest.raises(ZeroDivisionError):
            await worker.run(lambda: 1 / 0)
        return await worker.run(lambda: 7)

    assert asyncio.run(scenario()) == 7


def test_an_urgent_pass_is_urgent_in_the_nodes_core_budget(budgets) -> None:
    """So the node's LLM waits while it runs (`CoreBudget.forward(yields=True)`)."""
    flow, llm = budgets  # the second stands for the LLM's replica, another process

    async def scenario() -> list[bool]:
        worker = ModelThread(flow)
        seen = [await worker.run(llm.urgent_elsewhere, urgent=True), await worker.run(llm.urgent_elsewhere)]
        return seen + [llm.urgent_elsewhere()]

    assert asyncio.run(scenario()) == [True, False, False]
