"""The registry of user-registered voices, run as one named Ray actor so every replica sees the same voices.

Each voice is one file in a BlobStore (`tts_core.storage.voice_codec`), replaced atomically, so a
crash mid-write leaves the previous version intact. Every change is persisted before it is
acknowledged. One actor serialises the application's writes; a voice file is still created only
if none exists under its id, so that two stores on one location (two clusters during an upgrade)
never both register one id.

Metadata is held in memory (it is small and listing must be fast); features are loaded on demand
and kept in a bounded LRU cache, since a 30 s voice carries about half a megabyte of them.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import OrderedDict
from datetime import UTC, datetime, timedelta
from typing import Any

from deployments.actors import named_detached_actor
from deployments.metrics import metric
from tts_core.limits import VOICE_ID_RE, format_timestamp, parse_timestamp
from tts_core.modes import VOICE_TYPES
from tts_core.storage import voice_codec
from tts_core.storage.blobs import BlobStore
from tts_core.voices import VoiceExistsError, VoiceNotFoundError
from tts_core.wire import VoiceFeatures

logger = logging.getLogger(__name__)

ROLE = "voice-store"
UPDATABLE_FIELDS = frozenset({"name", "description", "language"})
_REQUIRED_META = frozenset({"voice_id", "name", "voice_type", "duration", "sample_rate"})
_OPTIONAL_META = frozenset({"description", "language", "prompt_text", "audio_format", "file_size"})


def _optional_str(values: dict[str, Any], key: str) -> str | None:
    value = values.get(key)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{key} must be a string or null")
    return value


def _public(meta: dict[str, Any]) -> dict[str, Any]:
    """A copy of a voice's metadata, so callers cannot alter the registry's state."""
    return dict(meta)


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
        for name in self._blobs.list(voice_codec.FILE_SUFFIX):
            try:
                data = self._blobs.get(name)
            except (KeyError, OSError):
                logger.exception("Voice file %s could not be read; skipped", name)
                continue
            try:
                table = voice_codec.read(data, columns=[*voice_codec.META_FIELDS, *voice_codec.FEATURE_SCHEMA.names])
                meta = voice_codec.meta_from(table)
                features = voice_codec.features_from(table)
                # Names map one-to-one to ids, so this also rules out two files claiming one voice.
                if name != voice_codec.file_name(meta["voice_id"]):
                    raise ValueError(f"file holds voice {meta['voice_id']!r}, which does not belong under this name")
            except Exception:
                self._quarantine(name)
                continue
            self._voices[meta["voice_id"]] = meta
            self._cache_features(meta["voice_id"], features)
            self._last_timestamp = max(self._last_timestamp, parse_timestamp(meta["created_at"]),
                                       parse_timestamp(meta["updated_at"]))
        logger.info("Voice store %s: restored %d voices", self._blobs.display_uri, len(self._voices))
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
        return format_timestamp(now)

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
        """Register and persist a voice; returns its metadata.

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
        features = voice_codec.normalize_features(features)
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
            record = {name: record.get(name, now) for name in voice_codec.META_FIELDS}
            data = voice_codec.encode(record, features, bytes(audio), audio_format)
            try:
                self._blobs.create(voice_codec.file_name(voice_id), data)
            except FileExistsError:
                raise VoiceExistsError(voice_id) from None
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
                data = self._blobs.get(voice_codec.file_name(voice_id))
                table = voice_codec.read(data, columns=list(voice_codec.FEATURE_SCHEMA.names))
                features = voice_codec.features_from(table)
            self._cache_features(voice_id, features)
            return features

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
        """Change name, description and/or language; persists, then returns the updated metadata."""
        unknown = changes.keys() - UPDATABLE_FIELDS
        if unknown:
            raise ValueError(f"only {sorted(UPDATABLE_FIELDS)} can be updated, not {sorted(unknown)}")
        if "name" in changes and not isinstance(changes["name"], str):
            raise ValueError("name must be a string")
        for key in ("description", "language"):
            _optional_str(changes, key)
        with self._lock:
            record = {**self._meta(voice_id), **changes, "updated_at": self._next_timestamp()}
            name = voice_codec.file_name(voice_id)
            self._blobs.put(name, voice_codec.with_meta(self._blobs.get(name), record))
            self._voices[voice_id] = record
            return _public(record)

    def delete(self, voice_id: str) -> None:
        """Remove the voice and its file; the id can be registered again."""
        with self._lock:
            self._meta(voice_id)
            self._blobs.delete(voice_codec.file_name(voice_id))
            del self._voices[voice_id]
            self._count_changed()
            self._features.pop(voice_id, None)

    def stats(self) -> dict[str, Any]:
        """Counts, durations and sizes over all registered voices."""
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

class VoiceStoreActor(VoiceStore):
    """The store as the application's actor: also publishes the number of registered voices."""

    def _count_changed(self) -> None:
        metric("cosyvoice_registered_voices").set(len(self._voices))

    def uri(self) -> str:
        return self._blobs.uri


async def voice_store_actor(uri: str, app_name: str) -> Any:
    """The application's voice-store actor; a store left by an earlier run with another URI is replaced."""
    import ray

    def create() -> Any:
        return named_detached_actor(VoiceStoreActor, app_name, ROLE, uri, max_task_retries=3, max_concurrency=16)

    actor = create()
    if await actor.uri.remote() != uri:
        ray.kill(actor, no_restart=True)
        actor = create()
    return actor
