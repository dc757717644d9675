"""One voice as one Parquet file: its metadata, its model features and the original upload.

Keeping the upload means features can be recomputed when the model changes; one file per voice,
replaced atomically, means there is no index to fall out of step with the files.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tts_core.limits import VOICE_ID_RE, parse_timestamp
from tts_core.modes import VOICE_TYPES
from tts_core.wire import MEL_BINS, VoiceFeatures

FILE_SUFFIX = ".parquet"

#: Persisted metadata, in the order of the API's Voice object (`is_active` is always true, so not stored).
META_SCHEMA = pa.schema([
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
FEATURE_SCHEMA = pa.schema([
    ("speech_token", pa.list_(pa.int32())),
    ("speech_feat", pa.list_(pa.float32())),
    ("speech_feat_frames", pa.int32()),
    ("embedding", pa.list_(pa.float32())),
    ("prompt_text_token", pa.list_(pa.int32())),
])
AUDIO_SCHEMA = pa.schema([("upload_audio", pa.binary()), ("upload_format", pa.string())])
_SCHEMA = pa.unify_schemas([META_SCHEMA, FEATURE_SCHEMA, AUDIO_SCHEMA]).with_metadata(
    {b"cosyvoice_serve.voice_format": b"1"})
META_FIELDS = tuple(META_SCHEMA.names)


def file_name(voice_id: str) -> str:
    """The blob holding a voice.

    Blob names must start with a letter or digit; the few ids that start with `_` or `-` get a `v.`
    prefix, which no plain `<voice_id>.parquet` name can collide with since ids never contain dots.
    """
    return f"{voice_id}{FILE_SUFFIX}" if voice_id[0].isalnum() else f"v.{voice_id}{FILE_SUFFIX}"


def _list_array(values: np.ndarray, type_: pa.DataType) -> pa.Array:
    """A one-row list column built from the array's buffer rather than from Python objects."""
    return pa.ListArray.from_arrays(pa.array([0, len(values)], pa.int32()), pa.array(values, type=type_))


def encode(meta: dict[str, Any], features: VoiceFeatures, audio: bytes, upload_format: str) -> bytes:
    """The file of a voice; `meta` holds every field of META_SCHEMA."""
    columns: dict[str, pa.Array] = {name: pa.array([meta[name]], META_SCHEMA.field(name).type)
                                    for name in META_FIELDS}
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


def with_meta(data: bytes, meta: dict[str, Any]) -> bytes:
    """The same file with its metadata replaced (features and upload unchanged)."""
    table = read(data)
    for name in META_FIELDS:
        index = table.schema.get_field_index(name)
        table = table.set_column(index, table.schema.field(index), pa.array([meta[name]], META_SCHEMA.field(name).type))
    return _write(table)


def _write(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def read(data: bytes, columns: list[str] | None = None) -> pa.Table:
    table = pq.read_table(pa.BufferReader(data), columns=columns)
    if table.num_rows != 1:
        raise ValueError(f"a voice file holds one row, found {table.num_rows}")
    return table


def meta_from(table: pa.Table) -> dict[str, Any]:
    """The metadata row, checked enough that a foreign or damaged file is refused rather than served."""
    meta = {name: table.column(name)[0].as_py() for name in META_FIELDS}
    if not isinstance(meta["voice_id"], str) or not VOICE_ID_RE.fullmatch(meta["voice_id"]):
        raise ValueError(f"invalid voice_id {meta['voice_id']!r}")
    if meta["voice_type"] not in VOICE_TYPES:
        raise ValueError(f"invalid voice_type {meta['voice_type']!r}")
    for name in ("name", "audio_format", "created_at", "updated_at", "file_size", "duration", "sample_rate"):
        if meta[name] is None:
            raise ValueError(f"missing {name}")
    parse_timestamp(meta["created_at"])
    parse_timestamp(meta["updated_at"])
    return meta


def _list_value(table: pa.Table, name: str, dtype: type[np.generic]) -> np.ndarray:
    values = table.column(name)[0].values
    if values is None:
        raise ValueError(f"missing {name}")
    return np.array(values.to_numpy(zero_copy_only=False), dtype=dtype)


def features_from(table: pa.Table) -> VoiceFeatures:
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


def upload_from(table: pa.Table) -> tuple[bytes, str]:
    """The originally uploaded audio bytes and their detected container format."""
    return table.column("upload_audio")[0].as_py(), table.column("upload_format")[0].as_py()


def normalize_features(features: VoiceFeatures) -> VoiceFeatures:
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
