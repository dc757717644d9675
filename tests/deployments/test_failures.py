"""Replica deaths as the pipeline meets them: which failures are a replica gone, and how a stage call
is made again (fake stage handles, no Ray cluster)."""

from __future__ import annotations

import asyncio
import time

import pytest
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayTaskError

from deployments.failures import ReplicaRecovery, StageUnavailableError, replica_gone, root_cause
from deployments.pipeline import SynthesisPipeline
from tts_core.wire import FrontendError, SpeechTokenRequest


def wrapped(exc: BaseException, hops: int = 1) -> BaseException:
    """`exc` as a caller `hops` processes away receives it."""
    for _ in range(hops):
        exc = RayTaskError("remote_call", "Traceback (most recent call last): ...", exc).as_instanceof_cause()
    return exc


def test_root_cause_unwraps_every_process_hop() -> None:
    cause = FrontendError("The text has nothing to speak.")
    assert root_cause(wrapped(cause, hops=2)) is cause
    assert root_cause(cause) is cause


@pytest.mark.parametrize("exc", [ActorDiedError(), ActorUnavailableError("The actor is restarting", None),
                                 StageUnavailableError("llm", 30.0), wrapped(ActorDiedError()),
                                 wrapped(StageUnavailableError("flow", 30.0), hops=2)],
                         ids=["died", "restarting", "stage", "wrapped-died", "wrapped-stage"])
def test_replica_gone(exc) -> None:
    assert replica_gone(exc)


@pytest.mark.parametrize("exc", [ValueError("bad"), wrapped(FrontendError("x")), wrapped(RuntimeError("bug"), 2)])
def test_other_failures_are_not_a_replica_gone(exc) -> None:
    assert not replica_gone(exc)


class FakeResponse:
    def __init__(self, outcome):
        self.outcome, self.cancelled = outcome, False

    def __await__(self):
        async def resolve():
            if isinstance(self.outcome, BaseException):
                raise self.outcome
            return await self.outcome if asyncio.iscoroutine(self.outcome) else self.outcome
        return resolve().__await__()

    def cancel(self) -> None:
        self.cancelled = True


class FakeStream:
    """A streamed reply: yields `items`, then raises `error` if there is one."""

    def __init__(self, items, error=None):
        self.items, self.error, self.cancelled = list(items), error, False

    def __aiter__(self):
        return self

    async def __anext__(self):
        if self.items:
            return self.items.pop(0)
        if self.error is not None:
            raise self.error
        raise StopAsyncIteration

    def cancel(self) -> None:
        self.cancelled = True


class FakeMethod:
    """A handle method whose successive calls have the given outcomes."""

    def __init__(self, *outcomes):
        self.outcomes, self.calls = list(outcomes), 0

    def remote(self, *args):
        self.calls += 1
        outcome = self.outcomes.pop(0)
        return outcome if isinstance(outcome, FakeStream) else FakeResponse(outcome)

    def options(self, **_):
        return self

    @property
    def generate(self):  # as the LLM handle's streaming method
        return self


def pipeline_with(llm=None) -> SynthesisPipeline:
    return SynthesisPipeline.func_or_class(frontend=None, llm=llm, flow=None, vocoder=None, recovery_timeout_s=1.0)


def test_a_stage_call_is_made_again_until_a_replica_answers() -> None:
    method = FakeMethod(ActorDiedError(), ActorUnavailableError("The actor is restarting", None), "mel")
    assert asyncio.run(pipeline_with().call("flow", method, [1, 2, 3])) == "mel"
    assert method.calls == 3


def test_other_failures_are_not_retried() -> None:
    method = FakeMethod(wrapped(RuntimeError("bug")), "never")
    with pytest.raises(RuntimeError):
        asyncio.run(pipeline_with().call("flow", method))
    assert method.calls == 1


def test_a_stage_gone_for_longer_than_the_wait_fails_the_call() -> None:
    method = FakeMethod(*[ActorDiedError()] * 100)
    with pytest.raises(StageUnavailableError):
        asyncio.run(pipeline_with().call("vocoder", method))
    assert 2 <= method.calls < 100


def test_a_call_waiting_for_a_replica_that_never_comes_is_bounded() -> None:
    async def never():
        await asyncio.sleep(3600)

    method = FakeMethod(ActorDiedError(), never())
    started = time.monotonic()
    with pytest.raises(StageUnavailableError):
        asyncio.run(pipeline_with().call("flow", method))
    assert time.monotonic() - started < 5


def test_a_dead_llm_replica_costs_a_delay_not_tokens() -> None:
    """The segment is generated again with the same seed; the tokens already relayed are skipped, so
    the consumer sees each token once, in order."""
    tokens = list(range(40))
    llm = FakeMethod(FakeStream([tokens[:5], tokens[5:12]], error=ActorDiedError()),
                     FakeStream([], error=ActorDiedError()),
                     FakeStream([tokens[:3], tokens[3:20], tokens[20:]]))

    async def relay() -> list[list[int]]:
        return [ready async for ready in pipeline_with(llm)._speech_tokens(SpeechTokenRequest(text_token=[1]))]

    relayed = asyncio.run(relay())
    assert [token for ready in relayed for token in ready] == tokens
    assert llm.calls == 3


def test_recovery_restarts_its_clock_after_progress() -> None:
    recovery = ReplicaRecovery("llm", timeout_s=10.0)
    assert recovery.remaining_s() is None
    asyncio.run(recovery.wait(ActorDiedError()))
    assert 9.0 < recovery.remaining_s() <= 10.0
    recovery.progressed()
    assert recovery.remaining_s() is None
