"""The node's cores are shared forward pass by forward pass between model replicas (the
`budgets` fixture: two replicas' budgets on one node of 4 cores)."""

from __future__ import annotations

import threading

import torch


def test_a_lone_forward_pass_gets_every_core(budgets) -> None:
    mine, _ = budgets
    assert mine.acquire() == 4
    mine.release()
    assert mine.acquire() == 4


def test_forward_passes_split_the_cores(budgets) -> None:
    mine, other = budgets
    assert other.acquire() == 4
    assert mine.acquire() == 1  # never none, even when all are taken
    mine.release()
    other.release()
    assert mine.acquire() == 4


def test_cores_of_a_dead_process_are_free_again(budgets) -> None:
    mine, _ = budgets
    mine.path.write_text("999999999:3")  # a pid no process has
    assert mine.acquire() == 4


def test_forward_sets_torch_threads_and_releases(budgets) -> None:
    mine, other = budgets
    other.acquire()
    other.release()
    with mine.forward() as threads:
        assert threads == 4 and torch.get_num_threads() == 4
        assert other.acquire() == 1
        other.release()
    assert other.acquire() == 4


def test_a_limited_forward_pass_leaves_the_rest_to_the_others(budgets) -> None:
    mine, other = budgets
    assert mine.acquire(limit=1) == 1
    assert other.acquire() == 3
    other.release()
    assert mine.acquire(limit=8) == 4


def test_a_long_pass_takes_the_cores_another_stage_leaves_when_it_rebalances(budgets) -> None:
    mine, other = budgets
    assert other.acquire() == 4
    with mine.forward() as threads:
        assert threads == 1
        assert mine.rebalance() == 1 and torch.get_num_threads() == 1  # the other is still busy
        other.release()
        assert mine.rebalance() == 4 and torch.get_num_threads() == 4
        assert other.acquire() == 1
        other.release()
    assert other.acquire() == 4  # the rebalanced grant went with the pass


def test_rebalancing_outside_a_forward_pass_takes_nothing(budgets) -> None:
    mine, other = budgets
    mine.rebalance()
    assert other.acquire() == 4


def test_a_yielding_pass_waits_while_another_process_runs_an_urgent_one(budgets) -> None:
    mine, other = budgets
    entered = threading.Event()

    def yielding_pass() -> None:
        with mine.forward(yields=True):
            entered.set()

    assert other.acquire(urgent=True) == 4
    waiting = threading.Thread(target=yielding_pass)
    waiting.start()
    assert not entered.wait(0.3)  # the urgent pass is still running
    with mine.forward():  # a pass that does not yield runs beside it, on what is left
        assert torch.get_num_threads() == 1
    other.release()
    assert entered.wait(5)
    waiting.join()
    # A pass that is not urgent holds no one back.
    assert other.acquire() == 4
    with mine.forward(yields=True) as threads:
        assert threads == 1
    other.release()


def test_an_urgent_pass_is_urgent_only_while_it_runs(budgets) -> None:
    mine, other = budgets
    with mine.forward(urgent=True):
        assert other.urgent_elsewhere()
        assert mine.rebalance() == 4 and other.urgent_elsewhere()  # still urgent after a rebalance
    assert not other.urgent_elsewhere()
    with mine.forward():
        assert not other.urgent_elsewhere()
