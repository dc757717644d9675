"""VoiceStore: CRUD, listing, stats and persistence of voices as Parquet files (no Ray needed)."""

from __future__ import annotations

import os
import pickle
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from deployments.voice_store import VoiceStore
from tts_core.storage import voice_codec
from tts_core.storage.blobs import BlobStore
from tts_core.voices import VoiceExistsError, VoiceNotFoundError
from tts_core.wire import VoiceFeatures

VOICE_KEYS = {"voice_id", "name", "description", "voice_type", "language", "prompt_text", "audio_format",
              "created_at", "updated_at", "file_size", "duration", "sample_rate"}


def features(seed: int, tokens: int = 50) -> VoiceFeatures:
    rng = np.random.default_rng(seed)
    return VoiceFeatures(speech_token=rng.integers(0, 6561, tokens).astype(np.int32),
                         speech_feat=rng.standard_normal((2 * tokens, 80)).astype(np.float32),
                         embedding=rng.standard_normal(192).astype(np.float32),
                         prompt_text_token=rng.integers(0, 150000, 7).astype(np.int32))


def meta(voice_id: str, **overrides: Any) -> dict[str, Any]:
    return {"voice_id": voice_id, "name": f"Voice {voice_id}", "voice_type": "zero_shot", "language": "en",
            "prompt_text": "hello there", "description": None, "audio_format": "wav", "file_size": 1000,
            "duration": 2.0, "sample_rate": 16000, **overrides}


def assert_features_equal(a: VoiceFeatures, b: VoiceFeatures) -> None:
    for name in ("speech_token", "speech_feat", "embedding", "prompt_text_token"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and np.array_equal(x, y), name


def stored_upload(root: Path, voice_id: str) -> tuple[bytes, str]:
    """The uploaded audio as the voice's file keeps it."""
    data = BlobStore(str(root)).get(voice_codec.file_name(voice_id))
    return voice_codec.upload_from(voice_codec.read(data))


def voice_ids(store: VoiceStore) -> list[str]:
    return sorted(voice["voice_id"] for voice in store.list(page_size=10_000)["voices"])


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "voices"


@pytest.fixture
def store(root: Path) -> VoiceStore:
    return VoiceStore(str(root))


def test_create_get_features_audio(store: VoiceStore, root: Path) -> None:
    feats = features(1)
    voice = store.create(meta("alice", description="warm"), feats, b"RIFFaudio", "wav")
    assert set(voice) == VOICE_KEYS
    assert voice["voice_id"] == "alice" and voice["description"] == "warm"
    assert voice["created_at"] == voice["updated_at"] and voice["created_at"].endswith("Z")
    datetime.fromisoformat(voice["created_at"])
    assert store.get("alice") == voice
    assert_features_equal(store.get_features("alice"), feats)
    assert stored_upload(root, "alice") == (b"RIFFaudio", "wav")
    assert os.listdir(root) == ["alice.parquet"]
    assert store.count() == 1 and voice_ids(store) == ["alice"]


def test_metadata_is_plain_python(store: VoiceStore) -> None:
    voice = store.create(meta("np", duration=np.float64(1.5), sample_rate=np.int64(24000), file_size=np.int32(9)),
                         features(1), b"x", "flac")
    assert type(voice["duration"]) is float and type(voice["sample_rate"]) is int and type(voice["file_size"]) is int


def test_defaults(store: VoiceStore) -> None:
    voice = store.create({"voice_id": "min", "name": "Min", "voice_type": "sft", "duration": 1.0,
                          "sample_rate": 16000}, features(1), b"12345", "m4a")
    assert voice["file_size"] == 5 and voice["audio_format"] == "wav"
    assert voice["description"] is None and voice["language"] is None and voice["prompt_text"] is None


def test_duplicate_id_is_refused(store: VoiceStore) -> None:
    store.create(meta("dup"), features(1), b"a", "wav")
    with pytest.raises(VoiceExistsError) as info:
        store.create(meta("dup", name="other"), features(2), b"b", "wav")
    assert info.value.voice_id == "dup"
    assert store.get("dup")["name"] == "Voice dup"


def test_unknown_voice(store: VoiceStore) -> None:
    for call in (store.get, store.get_features, store.delete,
                 lambda voice_id: store.update(voice_id, {"name": "x"})):
        with pytest.raises(VoiceNotFoundError) as info:
            call("ghost")
        assert info.value.voice_id == "ghost"
        assert str(info.value) == "Voice with ID 'ghost' not found"
    with pytest.raises(VoiceNotFoundError):
        store.get("../../etc/passwd")


def test_errors_survive_pickling() -> None:
    # Ray ships actor exceptions to the caller pickled.
    for error in (VoiceNotFoundError("v1"), VoiceExistsError("v1")):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and copy.voice_id == "v1" and str(copy) == str(error)


@pytest.mark.parametrize("bad", [{"voice_id": "a/b"}, {"voice_id": "x" * 65}, {"voice_id": ""},
                                 {"voice_type": "clone"}, {"is_active": True}, {"created_at": "2020"}])
def test_create_validates_metadata(store: VoiceStore, bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        store.create({**meta("ok"), **bad}, features(1), b"a", "wav")
    assert store.count() == 0


def test_ids_with_leading_dash_or_underscore(store: VoiceStore, root: Path) -> None:
    for voice_id in ("-a", "_a", "a"):
        store.create(meta(voice_id), features(1), b"a", "wav")
    assert voice_ids(VoiceStore(str(root))) == ["-a", "_a", "a"]


def test_list_filters_order_and_paging(store: VoiceStore) -> None:
    specs = [("c", "sft", "en"), ("a", "zero_shot", "zh"), ("b", "zero_shot", "en"), ("d", "instruct", None)]
    for voice_id, voice_type, language in specs:
        store.create(meta(voice_id, voice_type=voice_type, language=language), features(1), b"a", "wav")
    everything = store.list()
    assert [v["voice_id"] for v in everything["voices"]] == ["c", "a", "b", "d"]  # creation order
    assert (everything["total"], everything["page"], everything["page_size"]) == (4, 1, 50)
    created = [v["created_at"] for v in everything["voices"]]
    assert created == sorted(created)
    assert [v["voice_id"] for v in store.list(voice_type="zero_shot")["voices"]] == ["a", "b"]
    assert [v["voice_id"] for v in store.list(language="en")["voices"]] == ["c", "b"]
    assert store.list(voice_type="zero_shot", language="en")["total"] == 1
    assert store.list(language="EN")["total"] == 0
    page = store.list(page=2, page_size=3)
    assert [v["voice_id"] for v in page["voices"]] == ["d"] and page["total"] == 4
    assert store.list(page=3, page_size=3) == {"voices": [], "total": 4, "page": 3, "page_size": 3}
    with pytest.raises(ValueError):
        store.list(page=0)


def test_update(store: VoiceStore, root: Path) -> None:
    created = store.create(meta("u", description="before"), features(1), b"audio", "wav")
    updated = store.update("u", {"name": "New", "description": None, "language": "zh"})
    assert (updated["name"], updated["description"], updated["language"]) == ("New", None, "zh")
    assert updated["created_at"] == created["created_at"] and updated["updated_at"] > created["updated_at"]
    assert updated["prompt_text"] == created["prompt_text"]
    reopened = VoiceStore(str(root))
    assert reopened.get("u") == updated
    assert stored_upload(root, "u") == (b"audio", "wav")
    assert_features_equal(reopened.get_features("u"), features(1))


@pytest.mark.parametrize("changes", [{"voice_id": "x"}, {"prompt_text": "x"}, {"name": "ok", "voice_type": "sft"},
                                     {"name": None}, {"language": 5}])
def test_update_rejects_other_keys_and_types(store: VoiceStore, changes: dict[str, Any]) -> None:
    voice = store.create(meta("u"), features(1), b"a", "wav")
    with pytest.raises(ValueError):
        store.update("u", changes)
    assert store.get("u") == voice


def test_delete_frees_the_id(store: VoiceStore, root: Path) -> None:
    store.create(meta("gone"), features(1), b"a", "wav")
    store.delete("gone")
    assert store.count() == 0 and os.listdir(root) == []
    with pytest.raises(VoiceNotFoundError):
        store.get("gone")
    store.create(meta("gone"), features(2), b"b", "wav")
    assert_features_equal(store.get_features("gone"), features(2))
    assert voice_ids(VoiceStore(str(root))) == ["gone"]


def test_stats(store: VoiceStore) -> None:
    assert store.stats() == {"total_voices": 0, "active_voices": 0,
                             "voice_types": {"sft": 0, "zero_shot": 0, "cross_lingual": 0, "instruct": 0},
                             "languages": {}, "total_duration": 0.0, "total_size": 0}
    store.create(meta("a", voice_type="sft", language="en", duration=1.5, file_size=100), features(1), b"a", "wav")
    store.create(meta("b", voice_type="sft", language="zh", duration=2.0, file_size=200), features(1), b"a", "wav")
    store.create(meta("c", voice_type="instruct", language="en", duration=0.5, file_size=50), features(1), b"a",
                 "wav")
    store.create(meta("d", voice_type="cross_lingual", language=None, duration=1.0, file_size=1), features(1), b"a",
                 "wav")
    assert store.stats() == {"total_voices": 4, "active_voices": 4,
                             "voice_types": {"sft": 2, "zero_shot": 0, "cross_lingual": 1, "instruct": 1},
                             "languages": {"en": 2, "zh": 1}, "total_duration": 5.0, "total_size": 351}


def test_persistence_across_instances(store: VoiceStore, root: Path) -> None:
    originals = {f"v{i}": features(i, tokens=10 + i) for i in range(3)}
    for voice_id, feats in originals.items():
        store.create(meta(voice_id), feats, voice_id.encode() * 10, "mp3")
    store.create(meta("empty"), VoiceFeatures.embedding_only(np.ones(192, dtype=np.float32)), b"e", "wav")
    reopened = VoiceStore(str(root), feature_cache_size=1)
    assert reopened.list() == store.list()
    assert reopened.stats() == store.stats()
    for voice_id, feats in originals.items():
        assert_features_equal(reopened.get_features(voice_id), feats)
        assert stored_upload(root, voice_id) == (voice_id.encode() * 10, "mp3")
    empty = reopened.get_features("empty")
    assert empty.speech_token.shape == (0,) and empty.speech_feat.shape == (0, 80)
    # Timestamps keep increasing after a restart, so new voices still list last.
    reopened.create(meta("after"), features(9), b"a", "wav")
    assert reopened.list()["voices"][-1]["voice_id"] == "after"


def test_file_holds_features_and_audio(store: VoiceStore, root: Path) -> None:
    feats = features(3)
    store.create(meta("pq"), feats, b"original", "m4a")
    table = pq.read_table(root / "pq.parquet")
    assert table.num_rows == 1
    row = table.to_pylist()[0]
    assert row["upload_audio"] == b"original" and row["upload_format"] == "m4a"
    assert row["speech_feat_frames"] == 100 and len(row["speech_feat"]) == 100 * 80
    assert table.schema.field("speech_token").type.value_type == pa.int32()
    assert table.schema.field("embedding").type.value_type == pa.float32()


def test_corrupt_file_is_skipped_and_kept(store: VoiceStore, root: Path, caplog: pytest.LogCaptureFixture) -> None:
    store.create(meta("good"), features(1), b"a", "wav")
    (root / "bad.parquet").write_bytes(b"PAR1 this is not parquet")
    (root / "other.parquet").write_bytes((root / "good.parquet").read_bytes())  # voice under the wrong name
    reopened = VoiceStore(str(root))
    assert voice_ids(reopened) == ["good"]
    names = sorted(os.listdir(root))
    assert "good.parquet" in names and "bad.parquet" not in names and "other.parquet" not in names
    corrupt = [name for name in names if name.endswith(".corrupt")]
    assert len(corrupt) == 2
    assert any(name.startswith("bad.parquet.") for name in corrupt)
    assert "bad.parquet" in caplog.text
    # The id of a quarantined file is free and can be registered.
    reopened.create(meta("bad"), features(1), b"a", "wav")
    assert voice_ids(VoiceStore(str(root))) == ["bad", "good"]
