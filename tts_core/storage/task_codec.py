"""One async task record as one Parquet row of typed columns (the result as a struct)."""

from __future__ import annotations

import dataclasses
import json

import pyarrow as pa
import pyarrow.parquet as pq

from tts_core.modes import SynthesisMode
from tts_core.tasks import RenderedAudio, TaskRecord, TaskState

FILE_SUFFIX = ".parquet"

_RESULT_TYPE = pa.struct([("file_name", pa.string()), ("duration", pa.float64()), ("format", pa.string()),
                          ("sample_rate", pa.int64()), ("synthesis_time", pa.float64())])
SCHEMA = pa.schema([("task_id", pa.string()), ("mode", pa.string()), ("status", pa.string()),
                    ("progress", pa.float64()), ("created_at", pa.string()), ("started_at", pa.string()),
                    ("completed_at", pa.string()), ("finished_epoch", pa.float64()), ("error", pa.string()),
                    ("result", _RESULT_TYPE)]).with_metadata({b"cosyvoice_serve.task_format": b"2"})


def encode(record: TaskRecord) -> bytes:
    row = dataclasses.asdict(record)
    row["mode"], row["status"] = str(record.mode), str(record.status)
    buffer = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist([row], schema=SCHEMA), buffer)
    return buffer.getvalue().to_pybytes()


def decode(data: bytes) -> TaskRecord:
    table = pq.read_table(pa.BufferReader(data))
    if table.num_rows != 1:
        raise ValueError(f"a task file holds one row, found {table.num_rows}")
    row = {key: values[0] for key, values in table.to_pydict().items()}
    result = row["result"]
    if isinstance(result, str):  # format 1 kept the API's result body as JSON text
        body = json.loads(result)
        result = {"file_name": body["audio_url"].rsplit("/", 1)[-1],
                  **{key: body[key] for key in ("duration", "format", "sample_rate", "synthesis_time")}}
    return TaskRecord(task_id=row["task_id"], mode=SynthesisMode(row["mode"]), status=TaskState(row["status"]),
                      progress=float(row["progress"]), created_at=row["created_at"], started_at=row["started_at"],
                      completed_at=row["completed_at"], finished_epoch=row["finished_epoch"], error=row["error"],
                      result=RenderedAudio(**result) if result else None)
