"""The voice store and the task manager on an s3:// URI (a real S3-protocol server, pyarrow's client):
whole voices for every reader while one is rewritten, one winner among creators of one id, both
stores restored by a new instance, and no credential in what they log."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from deployments.task_manager import INTERRUPTED, TaskManager
from deployments.voice_store import VoiceStore
from tests.deployments.test_voice_store import assert_features_equal, features, meta
from tts_core.modes import SynthesisMode
from tts_core.storage import task_codec, voice_codec
from tts_core.storage.blobs import BlobStore
from tts_core.tasks import RenderedAudio, TaskRecord, TaskState
from tts_core.voices import VoiceExistsError


def test_voices_on_s3_survive_a_new_store(s3) -> None:
    uri = s3.uri("voices")
    store = VoiceStore(uri)
    originals = {f"v{index}": features(index, tokens=20 + index) for index in range(3)}
    for voice_id, feats in originals.items():
        store.create(meta(voice_id), feats, voice_id.encode() * 100, "wav")
    store.update("v1", {"name": "Renamed"})
    store.delete("v2")
    reopened = VoiceStore(uri, feature_cache_size=1)
    assert reopened.list() == store.list() and reopened.stats() == store.stats()
    assert reopened.get("v1")["name"] == "Renamed" and not reopened.exists("v2")
    for voice_id in ("v0", "v1"):
        assert_features_equal(reopened.get_features(voice_id), originals[voice_id])
    assert s3.keys(uri) == ["v0.parquet", "v1.parquet"]


def test_a_reader_never_sees_a_half_written_voice(s3) -> None:
    """One voice rewritten again and again (a multipart upload each time) while readers read its file."""
    uri = s3.uri("rewritten")
    writer = VoiceStore(uri)
    big = features(7, tokens=20_000)  # about 7 MB of features
    writer.create(meta("big", name="v0"), big, b"audio", "wav")
    names, stop, seen = {"v0"}, threading.Event(), []

    def read_until_stopped() -> None:
        blobs = BlobStore(uri)
        while not stop.is_set():
            table = voice_codec.read(blobs.get(voice_codec.file_name("big")))  # raises on a partial file
            assert table.num_rows == 1
            seen.append(voice_codec.meta_from(table)["name"])
            assert np.array_equal(voice_codec.features_from(table).speech_feat, big.speech_feat)

    with ThreadPoolExecutor(3) as pool:
        readers = [pool.submit(read_until_stopped) for _ in range(3)]
        for version in range(1, 6):
            names.add(f"v{version}")
            writer.update("big", {"name": f"v{version}"})
        stop.set()
        for reader in readers:
            reader.result(timeout=120)
    assert set(seen) <= names and len(set(seen)) >= 2, seen


def test_concurrent_creators_of_one_id_end_with_one_winner(s3) -> None:
    """Threads of one store (the actor's concurrency) and two stores on one URI (two clusters) race for one id."""
    uri = s3.uri("contended")
    stores = [VoiceStore(uri), VoiceStore(uri)]
    barrier = threading.Barrier(8)

    def register(index: int) -> str:
        barrier.wait(timeout=30)
        try:
            stores[index % 2].create(meta("same", name=f"writer {index}"), features(index, tokens=4000), b"a", "wav")
            return f"writer {index}"
        except VoiceExistsError:
            return "refused"

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(register, range(8)))
    [winner] = [result for result in results if result != "refused"]
    assert results.count("refused") == 7
    restored = VoiceStore(uri)
    assert restored.get("same")["name"] == winner
    assert_features_equal(restored.get_features("same"), features(int(winner.split()[1]), tokens=4000))
    assert s3.keys(uri) == ["same.parquet"]


def test_task_records_on_s3_are_restored(s3) -> None:
    tasks_uri, audio_uri = s3.uri("tasks"), s3.uri("audio")
    done = TaskRecord(task_id="task_000000000001", mode=SynthesisMode.SFT, status=TaskState.COMPLETED, progress=1.0,
                      created_at="2026-01-01T00:00:00Z", finished_epoch=4e9,
                      result=RenderedAudio("a.wav", duration=1.5, format="wav", sample_rate=24000, synthesis_time=0.3))
    running = TaskRecord(task_id="task_000000000002", mode=SynthesisMode.INSTRUCT, status=TaskState.PROCESSING,
                         progress=0.4, created_at="2026-01-01T00:00:01Z")
    records = BlobStore(tasks_uri)
    for record in (done, running):
        records.put(record.task_id + task_codec.FILE_SUFFIX, task_codec.encode(record))
    manager = TaskManager(tasks_uri, audio_uri, "s3-test", max_queued=4, max_running=2, retention_s=3600)
    assert manager.get(done.task_id) == done
    interrupted = manager.get(running.task_id)
    assert interrupted.status is TaskState.FAILED
    assert interrupted.error == INTERRUPTED.format(state=TaskState.PROCESSING)
    # The verdict is stored too: a further restart reads it back as it is.
    again = TaskManager(tasks_uri, audio_uri, "s3-test", max_queued=4, max_running=2, retention_s=3600)
    assert again.get(running.task_id) == interrupted


def test_stores_never_log_credentials(s3, caplog: pytest.LogCaptureFixture) -> None:
    uri = s3.uri("logged").replace("s3://", f"s3://AKIATESTCOSYVOICE:{s3.secret_key}@", 1)
    with caplog.at_level(logging.INFO):
        store = VoiceStore(uri)
        store.create(meta("a"), features(1), b"a", "wav")
        VoiceStore(uri)
    assert "restored 1 voices" in caplog.text
    assert s3.secret_key not in caplog.text and s3.secret_key not in repr(store._blobs)
