"""Task records survive a round trip through their Parquet file, typed column by column."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

from tts_core.modes import SynthesisMode
from tts_core.storage import task_codec
from tts_core.tasks import RenderedAudio, TaskRecord, TaskState


def test_completed_record_round_trips() -> None:
    record = TaskRecord(task_id="task_abc", mode=SynthesisMode.ZERO_SHOT, status=TaskState.COMPLETED, progress=1.0,
                        created_at="2026-01-01T00:00:00.000000Z", started_at="2026-01-01T00:00:01.000000Z",
                        completed_at="2026-01-01T00:00:02.000000Z", finished_epoch=1767225602.0,
                        result=RenderedAudio(file_name="f.mp3", duration=1.25, format="mp3", sample_rate=24000,
                                             synthesis_time=0.5))
    data = task_codec.encode(record)
    assert task_codec.decode(data) == record
    schema = pq.read_schema(pa.BufferReader(data))
    assert schema.field("result").type == pa.struct([("file_name", pa.string()), ("duration", pa.float64()),
                                                     ("format", pa.string()), ("sample_rate", pa.int64()),
                                                     ("synthesis_time", pa.float64())])
    assert schema.field("progress").type == pa.float64()


def test_pending_record_round_trips_without_result() -> None:
    record = TaskRecord(task_id="task_p", mode=SynthesisMode.SFT, status=TaskState.PENDING, progress=0.0,
                        created_at="2026-01-01T00:00:00.000000Z")
    decoded = task_codec.decode(task_codec.encode(record))
    assert decoded == record and decoded.status is TaskState.PENDING and decoded.result is None


def test_records_of_the_first_format_are_still_read() -> None:
    """Format 1 kept the API's result body as a JSON string: tasks stored by it are not lost."""
    body = {"success": True, "message": "SFT synthesis completed successfully", "audio_url": "/api/v1/audio/x.wav",
            "duration": 2.0, "format": "wav", "synthesis_time": 0.3, "sample_rate": 24000, "task_id": "task_old"}
    row = {"task_id": "task_old", "mode": "sft", "status": "completed", "progress": 1.0,
           "created_at": "2026-01-01T00:00:00.000000Z", "started_at": None, "completed_at": None,
           "finished_epoch": 5.0, "error": None, "result": json.dumps(body)}
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist([row]), sink)
    record = task_codec.decode(sink.getvalue().to_pybytes())
    assert record.result == RenderedAudio(file_name="x.wav", duration=2.0, format="wav", sample_rate=24000,
                                          synthesis_time=0.3)
