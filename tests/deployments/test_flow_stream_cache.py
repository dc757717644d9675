"""The flow replica's store of streams' decoder state: a byte budget, least recently used out first."""

from __future__ import annotations

from dataclasses import dataclass

from deployments.flow import StreamCacheStore


@dataclass
class Entry:
    nbytes: int


def test_store_keeps_streams_within_its_budget_dropping_the_oldest() -> None:
    store = StreamCacheStore(capacity_bytes=100)
    assert store.put("a", Entry(40)) == store.put("b", Entry(40)) == []
    assert store.put("c", Entry(40)) == ["a"]  # dropped to make room
    assert store.take("a") is None
    assert store.nbytes == 80 and set(store.entries) == {"b", "c"}


def test_taking_a_stream_removes_it_and_putting_it_back_makes_it_newest() -> None:
    store = StreamCacheStore(capacity_bytes=100)
    store.put("a", Entry(30))
    store.put("b", Entry(30))
    grown = Entry(50)
    assert store.take("a").nbytes == 30
    store.put("a", grown)  # a stream's next chunk hands back its larger state
    store.put("c", Entry(30))  # "b" is now the oldest
    assert store.take("b") is None and store.take("a") is grown
    assert store.nbytes == 30


def test_an_entry_larger_than_the_budget_is_not_kept() -> None:
    store = StreamCacheStore(capacity_bytes=100)
    store.put("a", Entry(60))
    assert store.put("b", Entry(101)) == ["b"]
    assert store.nbytes == 60 and store.take("b") is None
    assert StreamCacheStore(capacity_bytes=0).put("a", Entry(1)) == ["a"]


def test_every_stream_dropped_for_room_is_named() -> None:
    store = StreamCacheStore(capacity_bytes=100)
    for key in "abc":
        store.put(key, Entry(30))
    assert store.put("d", Entry(70)) == ["a", "b"]
    assert set(store.entries) == {"c", "d"} and store.nbytes == 100
