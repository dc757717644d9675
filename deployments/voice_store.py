"""The registry of user-registered voices, run as one named Ray actor so every replica sees the same voices.

Each voice is one Parquet file `<voice_id>.parquet` in a BlobStore: its metadata, its model features
and the original uploaded audio (so features can be recomputed when the model changes). One file per
voice, replaced atomically, means a crash mid-write leaves the previous version intact and there is
no index to fall out of step with the files. Every change is persisted before it is acknowledged.

Metadata is held in memory (it is small and listing must be fast); features are loaded on demand
and kept in a bounded LRU cache, since a 30 s voice carries about half a megabyte of them.
"""

from __future__ import annotations

import logging
import re
import threading
import uuid
from collections import OrderedDict
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from serve_app.storage import BlobStore
from tts_model.frontend import MEL_BINS, VoiceFeatures

logger = logging.getLogger(__name__)

VOICE_TYPES = ("sft", "zero_shot", "cross_lingual", "instruct")
VOICE_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
UPDATABLE_FIELDS = frozenset({"name", "description", "language"})
FILE_SUFFIX = ".parquet"

#: Persisted metadata, in the order of the API's Voice object (`is_active` is always true, so not stored).
_META_SCHEMA = pa.schema([
    ("voice_id", pa.string()),
    ("name", pa.string()),
    ("description", pa.string()),
    ("voice_type", pa.string()),
    ("language", pa.string()),
    ("prompt_text", pa.string()),
    ("audio_format", pa.string()),
    ("created_at", pa.string()),
    ("updated_at", pa.string()),
    ("file_size", pa.int64()),
    ("duration", pa.float64()),
    ("sample_rate", pa.int64()),
])
_FEATURE_SCHEMA = pa.schema([
    ("speech_token", pa.list_(pa.int32())),
    ("speech_feat", pa.list_(pa.float32())),
    ("speech_feat_frames", pa.int32()),
    ("embedding", pa.list_(pa.float32())),
    ("prompt_text_token", pa.list_(pa.int32())),
])
_AUDIO_SCHEMA = pa.schema([("upload_audio", pa.binary()), ("upload_format", pa.string())])
_SCHEMA = pa.unify_schemas([_META_SCHEMA, _FEATURE_SCHEMA, _AUDIO_SCHEMA]).with_metadata(
    {b"cosyvoice_serve.voice_format": b"1"})
_META_FIELDS = tuple(_META_SCHEMA.names)
_REQUIRED_META = frozenset({"voice_id", "name", "voice_type", "duration", "sample_rate"})
_OPTIONAL_META = frozenset({"description", "language", "prompt_text", "audio_format", "file_size"})
_TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


class _VoiceIdError(Exception):
    """An error about one voice id; `args` holds only the id so it pickles back intact across Ray."""

    template: str

    def __init__(self, voice_id: str) -> None:
        super().__init__(voice_id)
        self.voice_id = voice_id

    @property
    def message(self) -> str:
        return self.template.format(voice_id=self.voice_id)

    def __str__(self) -> str:
        return self.message


class VoiceNotFoundError(_VoiceIdError, KeyError):
    """No registered voice has this id (the API answers 404 voice_not_found)."""

    template = "Voice with ID '{voice_id}' not found"


class VoiceExistsError(_VoiceIdError, ValueError):
    """A voice with this id is already registered (the API answers 409 voice_already_exists)."""

    template = "Voice with ID '{voice_id}' already exists"


def _file_name(voice_id: str) -> str:
    """The blob holding a voice.

    Blob names must start with a letter or digit; the few ids that start with `_` or `-` get a `v.`
    prefix, which no plain `<voice_id>.parquet` name can collide with since ids never contain dots.
    """
    return f"{voice_id}{FILE_SUFFIX}" if voice_id[0].isalnum() else f"v.{voice_id}{FILE_SUFFIX}"


def _list_array(values: np.ndarray, type_: pa.DataType) -> pa.Array:
    """A one-row list column built from the array's buffer rather than from Python objects."""
    return pa.ListArray.from_arrays(pa.array([0, len(values)], pa.int32()), pa.array(values, type=type_))


def _encode(meta: dict[str, Any], features: VoiceFeatures, audio: bytes, upload_format: str) -> bytes:
    columns: dict[str, pa.Array] = {name: pa.array([meta[name]], _META_SCHEMA.field(name).type)
                                    for name in _META_FIELDS}
    columns.update(
        speech_token=_list_array(features.speech_token, pa.int32()),
        speech_feat=_list_array(features.speech_feat.reshape(-1), pa.float32()),
        speech_feat_frames=pa.array([features.speech_feat.shape[0]], pa.int32()),
        embedding=_list_array(features.embedding, pa.float32()),
        prompt_text_token=_list_array(features.prompt_text_token, pa.int32()),
        upload_audio=pa.array([audio], pa.binary()),
        upload_format=pa.array([upload_format], pa.string()),
    )
    return _write(pa.table(columns, schema=_SCHEMA))


def _write(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def _read(data: bytes, columns: list[str] | None = None) -> pa.Table:
    table = pq.read_table(pa.BufferReader(data), columns=columns)
    if table.num_rows != 1:
        raise ValueError(f"a voice file holds one row, found {table.num_rows}")
    return table


def _meta_from(table: pa.Table) -> dict[str, Any]:
    """The metadata row, checked enough that a foreign or damaged file is refused rather than served."""
    meta = {name: table.column(name)[0].as_py() for name in _META_FIELDS}
    if not isinstance(meta["voice_id"], str) or not VOICE_ID_RE.fullmatch(meta["voice_id"]):
        raise ValueError(f"invalid voice_id {meta['voice_id']!r}")
    if meta["voice_type"] not in VOICE_TYPES:
        raise ValueError(f"invalid voice_type {meta['voice_type']!r}")
    for name in ("name", "audio_format", "created_at", "updated_at", "file_size", "duration", "sample_rate"):
        if meta[name] is None:
            raise ValueError(f"missing {name}")
    _parse_timestamp(meta["created_at"])
    _parse_timestamp(meta["updated_at"])
    return meta


def _list_value(table: pa.Table, name: str, dtype: type[np.generic]) -> np.ndarray:
    values = table.column(name)[0].values
    if values is None:
        raise ValueError(f"missing {name}")
    return np.array(values.to_numpy(zero_copy_only=False), dtype=dtype)


def _features_from(table: pa.Table) -> VoiceFeatures:
    frames = table.column("speech_feat_frames")[0].as_py()
    flat = _list_value(table, "speech_feat", np.float32)
    if frames is None or frames < 0 or (frames == 0 and flat.size) or (frames and flat.size % frames):
        raise ValueError(f"speech_feat of {flat.size} values does not split into {frames} frames")
    return VoiceFeatures(
        speech_token=_list_value(table, "speech_token", np.int32),
        speech_feat=flat.reshape(frames, -1) if frames else flat.reshape(0, MEL_BINS),
        embedding=_list_value(table, "embedding", np.float32),
        prompt_text_token=_list_value(table, "prompt_text_token", np.int32),
    )


def _normalize_features(features: VoiceFeatures) -> VoiceFeatures:
    """The features with the dtypes and shapes the file format (and the model) expect."""
    feat = np.asarray(features.speech_feat, dtype=np.float32)
    if feat.ndim != 2:
        raise ValueError(f"speech_feat must be 2-D [frames, bins], got shape {feat.shape}")
    return VoiceFeatures(
        speech_token=np.asarray(features.speech_token, dtype=np.int32).reshape(-1),
        speech_feat=np.ascontiguousarray(feat),
        embedding=np.asarray(features.embedding, dtype=np.float32).reshape(-1),
        prompt_text_token=np.asarray(features.prompt_text_token, dtype=np.int32).reshape(-1),
    )


def _parse_timestamp(value: str) -> datetime:
    return datetime.strptime(value, _TIMESTAMP_FORMAT).replace(tzinfo=UTC)


def _optional_str(values: dict[str, Any], key: str) -> str | None:
    value = values.get(key)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{key} must be a string or null")
    return value


def _public(meta: dict[str, Any]) -> dict[str, Any]:
    """The API's Voice object: a copy, so callers cannot alter the registry's state."""
    return {**meta, "is_active": True}


class VoiceStore:
    """Registered voices persisted in a BlobStore; all methods are thread-safe and return plain values."""

    def __init__(self, uri: str, feature_cache_size: int = 256) -> None:
        """Open the store at `uri` (a BlobStore URI or local path) and restore every voice found there."""
        self._blobs = BlobStore(uri)
        self._lock = threading.RLock()
        self._voices: dict[str, dict[str, Any]] = {}
        self._features: OrderedDict[str, VoiceFeatures] = OrderedDict()
        self._feature_cache_size = feature_cache_size
        self._last_timestamp = datetime.fromtimestamp(0, UTC)
        self._restore()

    # -- start-up -------------------------------------------------------------------------------

    def _restore(self) -> None:
        for name in self._blobs.list(FILE_SUFFIX):
            try:
                data = self._blobs.get(name)
            except (KeyError, OSError):
                logger.exception("Voice file %s could not be read; skipped", name)
                continue
            try:
                table = _read(data, columns=[*_META_FIELDS, *_FEATURE_SCHEMA.names])
                meta = _meta_from(table)
                features = _features_from(table)
                # Names map one-to-one to ids, so this also rules out two files claiming one voice.
                if name != _file_name(meta["voice_id"]):
                    raise ValueError(f"file holds voice {meta['voice_id']!r}, which does not belong under this name")
            except Exception:
                self._quarantine(name)
                continue
            self._voices[meta["voice_id"]] = meta
            self._cache_features(meta["voice_id"], features)
            self._last_timestamp = max(self._last_timestamp, _parse_timestamp(meta["created_at"]),
                                       _parse_timestamp(meta["updated_at"]))
        logger.info("Voice store %s: restored %d voices", self._blobs.uri, len(self._voices))
        self._count_changed()

    def _quarantine(self, name: str) -> None:
        """Move an unreadable voice file aside: it is kept for inspection but no longer loaded."""
        aside = f"{name}.{uuid.uuid4().hex[:8]}.corrupt"
        logger.exception("Voice file %s is corrupt; moved aside to %s", name, aside)
        try:
            self._blobs.rename(name, aside)
        except (OSError, ValueError):
            logger.exception("Could not move corrupt voice file %s aside; it stays and is skipped", name)

    # -- helpers --------------------------------------------------------------------------------

    def _next_timestamp(self) -> str:
        """Now, strictly after every timestamp handed out before, so created_at orders voices by creation."""
        now = max(datetime.now(UTC), self._last_timestamp + timedelta(microseconds=1))
        self._last_timestamp = now
        return now.strftime(_TIMESTAMP_FORMAT)

    def _meta(self, voice_id: str) -> dict[str, Any]:
        try:
            return self._voices[voice_id]
        except KeyError:
            raise VoiceNotFoundError(voice_id) from None

    def _cache_features(self, voice_id: str, features: VoiceFeatures) -> None:
        self._features[voice_id] = features
        self._features.move_to_end(voice_id)
        while len(self._features) > self._feature_cache_size:
            self._features.popitem(last=False)

    # -- API ------------------------------------------------------------------------------------

    def create(self, meta: dict[str, Any], features: VoiceFeatures, audio: bytes, audio_format: str) -> dict[str, Any]:
        """Register and persist a voice; returns its public Voice object.

        `meta` holds the Voice fields the client chose plus `duration` and `sample_rate` of the sample;
        `file_size` defaults to the size of `audio` and `audio_format` (the storage format) to wav.
        The `audio_format` argument is the container detected in the uploaded `audio` bytes.
        """
        missing = _REQUIRED_META - meta.keys()
        unknown = meta.keys() - _REQUIRED_META - _OPTIONAL_META
        if missing or unknown:
            raise ValueError(f"voice metadata: missing {sorted(missing)}, unexpected {sorted(unknown)}")
        voice_id = meta["voice_id"]
        if not isinstance(voice_id, str) or not VOICE_ID_RE.fullmatch(voice_id):
            raise ValueError(f"invalid voice_id {voice_id!r}")
        if meta["voice_type"] not in VOICE_TYPES:
            raise ValueError(f"invalid voice_type {meta['voice_type']!r}")
        features = _normalize_features(features)
        record = {
            "voice_id": voice_id,
            "name": str(meta["name"]),
            "description": _optional_str(meta, "description"),
            "voice_type": meta["voice_type"],
            "language": _optional_str(meta, "language"),
            "prompt_text": _optional_str(meta, "prompt_text"),
            "audio_format": str(meta.get("audio_format") or "wav"),
            "file_size": int(meta.get("file_size", len(audio))),
            "duration": float(meta["duration"]),
            "sample_rate": int(meta["sample_rate"]),
        }
        with self._lock:
            if voice_id in self._voices:
                raise VoiceExistsError(voice_id)
            now = self._next_timestamp()
            # Fills in created_at and updated_at, keeping the Voice object's key order.
            record = {name: record.get(name, now) for name in _META_FIELDS}
            self._blobs.put(_file_name(voice_id), _encode(record, features, bytes(audio), audio_format))
            self._voices[voice_id] = record
            self._count_changed()
            self._cache_features(voice_id, features)
            return _public(record)

    def get(self, voice_id: str) -> dict[str, Any]:
        with self._lock:
            return _public(self._meta(voice_id))

    def get_features(self, voice_id: str) -> VoiceFeatures:
        """The voice's model features (from the cache, else its file)."""
        with self._lock:
            self._meta(voice_id)
            features = self._features.get(voice_id)
            if features is None:
                table = _read(self._blobs.get(_file_name(voice_id)), columns=list(_FEATURE_SCHEMA.names))
                features = _features_from(table)
            self._cache_features(voice_id, features)
            return features

    def get_audio(self, voice_id: str) -> tuple[bytes, str]:
        """The originally uploaded audio bytes and their detected container format."""
        with self._lock:
            self._meta(voice_id)
            table = _read(self._blobs.get(_file_name(voice_id)), columns=list(_AUDIO_SCHEMA.names))
        return table.column("upload_audio")[0].as_py(), table.column("upload_format")[0].as_py()

    def list(self, voice_type: str | None = None, language: str | None = None, page: int = 1,
             page_size: int = 50) -> dict[str, Any]:
        """A page of voices matching the exact-match filters, ordered by created_at then voice_id."""
        if page < 1 or page_size < 1:
            raise ValueError("page and page_size must be at least 1")
        with self._lock:
            matches = sorted((meta for meta in self._voices.values()
                              if (voice_type is None or meta["voice_type"] == voice_type)
                              and (language is None or meta["language"] == language)),
                             key=lambda meta: (meta["created_at"], meta["voice_id"]))
        start = (page - 1) * page_size
        return {"voices": [_public(meta) for meta in matches[start:start + page_size]], "total": len(matches),
                "page": page, "page_size": page_size}

    def update(self, voice_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        """Change name, description and/or language; persists, then returns the updated Voice object."""
        unknown = changes.keys() - UPDATABLE_FIELDS
        if unknown:
            raise ValueError(f"only {sorted(UPDATABLE_FIELDS)} can be updated, not {sorted(unknown)}")
        if "name" in changes and not isinstance(changes["name"], str):
            raise ValueError("name must be a string")
        for key in ("description", "language"):
            _optional_str(changes, key)
        with self._lock:
            record = {**self._meta(voice_id), **changes, "updated_at": self._next_timestamp()}
            name = _file_name(voice_id)
            table = _read(self._blobs.get(name))
            for field in _META_FIELDS:
                index = table.schema.get_field_index(field)
                table = table.set_column(index, table.schema.field(index),
                                         pa.array([record[field]], _META_SCHEMA.field(field).type))
            self._blobs.put(name, _write(table))
            self._voices[voice_id] = record
            return _public(record)

    def delete(self, voice_id: str) -> None:
        """Remove the voice and its file; the id can be registered again."""
        with self._lock:
            self._meta(voice_id)
            self._blobs.delete(_file_name(voice_id))
            del self._voices[voice_id]
            self._count_changed()
            self._features.pop(voice_id, None)

    def stats(self) -> dict[str, Any]:
        """The body of `GET /api/v1/voices/stats/summary`."""
        with self._lock:
            metas = list(self._voices.values())
        voice_types = dict.fromkeys(VOICE_TYPES, 0)
        languages: dict[str, int] = {}
        for meta in metas:
            voice_types[meta["voice_type"]] += 1
            if meta["language"] is not None:
                languages[meta["language"]] = languages.get(meta["language"], 0) + 1
        return {"total_voices": len(metas), "active_voices": len(metas), "voice_types": voice_types,
                "languages": dict(sorted(languages.items())),
                "total_duration": float(sum(meta["duration"] for meta in metas)),
                "total_size": sum(meta["file_size"] for meta in metas)}

    def count(self) -> int:
        with self._lock:
            return len(self._voices)

    def _count_changed(self) -> None:
        """Hook for the actor, which publishes the count as a metric."""

    def exists(self, voice_id: str) -> bool:
        with self._lock:
            return voice_id in self._voices

    def uri(self) -> str:
        return self._blobs.uri

    def ids(self) -> list[str]:
        with self._lock:
            return sorted(self._voices)


class VoiceStoreActor(VoiceStore):
    """The store as the application's actor: also publishes the number of registered voices."""

    def _count_changed(self) -> None:
        from deployments.metrics import metric

        metric("cosyvoice_registered_voices").set(len(self._voices))


async def voice_store_actor(uri: str, app_name: str) -> Any:
    """The application's voice-store actor, created by whichever replica asks first.

    It is named (every ingress replica and the task manager share it) and detached, so it
    outlives any replica that created it; Ray restarts it if it dies, and it restores itself
    from its files. A store left by an earlier run with another URI is replaced.
    """
    import ray

    name, namespace = f"{app_name}-voice-store", "cosyvoice-serve"
    actor_class = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=3, max_concurrency=16)(VoiceStoreActor)
    actor = actor_class.options(name=name, namespace=namespace, lifetime="detached", get_if_exists=True).remote(uri)
    if await actor.uri.remote() != uri:
        ray.kill(actor, no_restart=True)
        actor = actor_class.options(name=name, namespace=namespace, lifetime="detached",
                                    get_if_exists=True).remote(uri)
    return actor
