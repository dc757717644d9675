"""BlobStore on object storage (a real S3-protocol server, pyarrow's S3 client): writes in place and
atomic, a killed writer leaves the old object, one winner among processes creating one name, and
credentials never shown."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import tts_core.storage.blobs as blobs
from tts_core.storage.blobs import BlobStore, redact_uri

ROOT = Path(__file__).resolve().parents[2]


def run_python(code: str, *args: str) -> subprocess.Popen:
    """A separate Python process running `code` (with this checkout importable), its stdout piped."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], stdout=subprocess.PIPE, text=True,
                            env=env)


def test_basic_operations_on_s3(s3) -> None:
    store = BlobStore(s3.uri("basics"))
    assert store.list() == [] and not store.exists("a.wav")
    store.put("a.wav", b"first")
    store.put("a.wav", b"second")
    store.put("b.parquet", b"1")
    assert store.get("a.wav") == b"second" and store.exists("a.wav")
    assert store.list() == ["a.wav", "b.parquet"] and store.list(".wav") == ["a.wav"]
    assert store.mtime("a.wav") == pytest.approx(time.time(), abs=60)
    with pytest.raises(KeyError):
        store.get("missing.wav")
    store.rename("b.parquet", "b.parquet.corrupt")
    assert store.list() == ["a.wav", "b.parquet.corrupt"]
    assert store.delete_older_than(3600) == [] and store.delete_older_than(-60, suffix=".wav") == ["a.wav"]
    store.delete("a.wav")
    store.delete("a.wav")  # deleting again is not an error
    assert store.list() == ["b.parquet.corrupt"]
    assert s3.keys(store.uri) == ["b.parquet.corrupt"]
    # A second store on the same URI (another process, after a restart) sees the same blobs.
    assert BlobStore(store.uri).get("b.parquet.corrupt") == b"1"


class RecordingFileSystem:
    """Wraps the store's filesystem and records the paths written and moved."""

    def __init__(self, fs: object) -> None:
        self.fs, self.written, self.moved = fs, [], []

    def __getattr__(self, name: str) -> object:
        return getattr(self.fs, name)

    def open_output_stream(self, path: str) -> object:
        self.written.append(path)
        return self.fs.open_output_stream(path)

    def move(self, src: str, dst: str) -> None:
        self.moved.append((src, dst))
        self.fs.move(src, dst)


def test_put_writes_the_object_in_place(s3) -> None:
    """On S3 a move is a copy and a delete, while one upload is already atomic: no temporary object."""
    store = BlobStore(s3.uri("inplace"))
    recording = RecordingFileSystem(store._fs)
    store._fs = recording
    store.put("voice.parquet", b"x" * 100_000)
    store.put("voice.parquet", b"y")
    assert [path.rsplit("/", 1)[1] for path in recording.written] == ["voice.parquet"] * 2
    assert recording.moved == []
    assert store.get("voice.parquet") == b"y" and s3.keys(store.uri) == ["voice.parquet"]


WRITER = """
    import hashlib, sys
    from tts_core.storage.blobs import BlobStore
    store, payload = BlobStore(sys.argv[1]), bytes(range(256)) * (160 * 1024)  # 40 MB: a multipart upload
    version = 0
    while True:
        print("writing", version, flush=True)
        body = version.to_bytes(8, "big") + payload
        store.put("blob", body + hashlib.sha256(body).digest())
        print("wrote", version, flush=True)
        version += 1
"""


def test_a_writer_killed_mid_upload_leaves_the_old_object(s3) -> None:
    uri = s3.uri("killed")
    writer = run_python(WRITER, uri)
    try:
        lines = []
        while not (lines and lines[-1] == "writing 2"):  # two whole versions stored, the third under way
            line = writer.stdout.readline().strip()
            assert line, "the writer died"
            lines.append(line)
        time.sleep(0.3)  # into the upload, well short of its end
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
    data = BlobStore(uri).get("blob")
    body, digest = data[:-32], data[-32:]
    assert hashlib.sha256(body).digest() == digest, "a partly written object is visible"
    assert int.from_bytes(body[:8], "big") in (1, 2)
    assert s3.keys(uri) == ["blob"]  # nothing left behind by the killed writer


CREATOR = """
    import sys, time
    from tts_core.storage.blobs import BlobStore
    store, start_at, me = BlobStore(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
    time.sleep(max(0.0, start_at - time.time()))
    try:  # a large object, so that the others check while the first upload is still running
        store.create("voice.parquet", me.encode().ljust(8 << 20))
        print("won")
    except FileExistsError:
        print("lost")
"""


@pytest.mark.parametrize("where", ["s3", "local"])
def test_processes_creating_one_name_end_with_one_winner(s3, tmp_path: Path, where: str) -> None:
    uri = s3.uri("race") if where == "s3" else str(tmp_path / "race")
    BlobStore(uri)
    start_at = time.time() + 4  # after every process has imported pyarrow
    racers = {f"writer-{index}": run_python(CREATOR, uri, str(start_at), f"writer-{index}") for index in range(6)}
    results = {name: process.communicate(timeout=120)[0].strip() for name, process in racers.items()}
    assert all(process.returncode == 0 for process in racers.values()), results
    winners = [name for name, result in results.items() if result == "won"]
    assert len(winners) == 1 and sorted(results.values()) == ["lost"] * 5 + ["won"], results
    assert BlobStore(uri).get("voice.parquet").rstrip() == winners[0].encode()
    if where == "s3":
        assert s3.keys(uri) == ["voice.parquet"]  # every claim withdrawn


def test_a_crashed_writers_claim_expires(s3, monkeypatch: pytest.MonkeyPatch) -> None:
    store = BlobStore(s3.uri("stale"))
    store._write(f"{store._root}/.claims/voice.parquet.{'0' * 32}", b"")  # left by a writer that died
    monkeypatch.setattr(blobs, "CLAIM_WAIT_S", 1.0)
    with pytest.raises(TimeoutError):
        store.create("voice.parquet", b"blocked while the claim is fresh")
    monkeypatch.setattr(blobs, "CLAIM_STALE_S", 1.0)
    monkeypatch.setattr(blobs, "CLAIM_WAIT_S", 10.0)
    time.sleep(2.1)  # object times have a one-second resolution
    store.create("voice.parquet", b"mine")
    assert store.get("voice.parquet") == b"mine"
    with pytest.raises(FileExistsError):
        store.create("voice.parquet", b"again")


SECRET_URIS = [
    ("s3://AKIAEXAMPLE:wJalrSECRET@bucket/voices", "s3://***@bucket/voices"),
    ("s3://AKIAEXAMPLE:wJalr%2FSECRET@bucket/voices?endpoint_override=minio:9000&scheme=http",
     "s3://***@bucket/voices?endpoint_override=minio:9000&scheme=http"),
    ("abfs://account:keySECRET@container/audio", "abfs://***@container/audio"),
    ("s3://bucket/tasks?endpoint_override=127.0.0.1:9000&scheme=http",
     "s3://bucket/tasks?endpoint_override=127.0.0.1:9000&scheme=http"),
    ("/var/data/voices", "/var/data/voices"),
]


@pytest.mark.parametrize(("uri", "shown"), SECRET_URIS)
def test_credentials_in_a_uri_are_never_shown(uri: str, shown: str) -> None:
    assert redact_uri(uri) == shown and "SECRET" not in redact_uri(uri)


def test_store_shows_its_uri_without_credentials(s3) -> None:
    uri = s3.uri("shown").replace("s3://", f"s3://{os.environ['AWS_ACCESS_KEY_ID']}:{s3.secret_key}@", 1)
    store = BlobStore(uri)
    store.put("x", b"1")  # the credentials in the URI are the ones used
    assert s3.secret_key not in repr(store) and s3.secret_key not in store.display_uri
    assert repr(store).startswith("BlobStore('s3://***@")
