"""The `Server-Timing` value: stages in their order, in milliseconds, read back by the benchmark."""

from __future__ import annotations

import pytest

from tts_core.timing import StageTimes, parse_server_timing


def test_header_lists_stages_in_request_order_and_sums_repeats() -> None:
    times = StageTimes()
    times.add("vocoder", 0.010)
    times.add("flow", 0.250)
    times.add("prompt", 0.5)
    times.add("flow", 0.125)
    assert times.header() == "prompt;dur=500.0, flow;dur=375.0, vocoder;dur=10.0"
    assert times.header(total_s=1.0).endswith(", total;dur=1000.0")


def test_take_hands_over_and_starts_again() -> None:
    times = StageTimes({"llm": 1.0})
    assert times.take() == {"llm": 1.0}
    assert times.header() == ""
    times.merge({"llm": 0.5, "flow": 0.25})
    times.merge({"flow": 0.25})
    assert times.seconds == {"llm": 0.5, "flow": 0.5}


def test_parse_reads_durations_and_skips_entries_without_one() -> None:
    times = StageTimes({"text": 0.002, "llm_first": 1.25, "custom": 0.1})
    assert parse_server_timing(times.header()) == pytest.approx({"text": 0.002, "llm_first": 1.25, "custom": 0.1})
    assert parse_server_timing('cache;desc="hit", db;dur=53, app;desc=x;dur="47.2", bad;dur=x') == pytest.approx({
        "db": 0.053, "app": 0.0472})
    assert parse_server_timing("") == {}
