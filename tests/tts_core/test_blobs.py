"""BlobStore: atomic writes, listing, retention and name safety on the local filesystem."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tts_core.storage.blobs import BlobStore, safe_name


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    return BlobStore(str(tmp_path / "blobs"))


def test_put_get_exists_delete(store: BlobStore) -> None:
    assert not store.exists("a.wav")
    store.put("a.wav", b"first")
    assert store.exists("a.wav") and store.get("a.wav") == b"first"
    store.put("a.wav", b"second")
    assert store.get("a.wav") == b"second"
    store.delete("a.wav")
    assert not store.exists("a.wav")
    store.delete("a.wav")  # deleting again is not an error
    with pytest.raises(KeyError):
        store.get("a.wav")


def test_put_leaves_no_temporary_files(store: BlobStore, tmp_path: Path) -> None:
    store.put("a.bin", b"x" * 100_000)
    store.put("a.bin", b"y")
    assert os.listdir(tmp_path / "blobs") == ["a.bin"]


class CrashingFileSystem:
    """Wraps the store's filesystem: records where data is written, and fails the final move."""

    def __init__(self, fs: object) -> None:
        self.fs = fs
        self.written: list[str] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self.fs, name)

    def open_output_stream(self, path: str) -> object:
        self.written.append(path)
        return self.fs.open_output_stream(path)

    def move(self, src: str, dst: str) -> None:
        raise OSError("crashed before the rename")


def test_put_writes_elsewhere_then_moves(store: BlobStore, tmp_path: Path) -> None:
    store.put("a.bin", b"old")
    crashing = CrashingFileSystem(store._fs)
    store._fs = crashing
    with pytest.raises(OSError, match="crashed"):
        store.put("a.bin", b"new")
    # The data went to another file of the same folder, which a failed put cleans up.
    [written] = crashing.written
    assert os.path.dirname(written) == str(tmp_path / "blobs") and not written.endswith("/a.bin")
    assert store.get("a.bin") == b"old"
    assert os.listdir(tmp_path / "blobs") == ["a.bin"]


def test_list_and_suffix(store: BlobStore, tmp_path: Path) -> None:
    for name in ("b.parquet", "a.parquet", "c.wav"):
        store.put(name, b"1")
    (tmp_path / "blobs" / "sub").mkdir()
    (tmp_path / "blobs" / ".hidden").write_bytes(b"1")
    assert store.list() == ["a.parquet", "b.parquet", "c.wav"]
    assert store.list(".parquet") == ["a.parquet", "b.parquet"]


def test_relative_path_is_made_absolute_and_created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = BlobStore("data/voices")
    assert os.path.isabs(store.uri)
    store.put("x", b"1")
    monkeypatch.chdir("/")
    assert (tmp_path / "data" / "voices" / "x").read_bytes() == b"1"
    assert store.get("x") == b"1"


def test_file_uri(tmp_path: Path) -> None:
    store = BlobStore((tmp_path / "viauri").as_uri())
    store.put("x", b"1")
    assert (tmp_path / "viauri" / "x").read_bytes() == b"1"
    assert BlobStore(str(tmp_path / "viauri")).list() == ["x"]


def test_mtime_and_retention(store: BlobStore, tmp_path: Path) -> None:
    store.put("old.wav", b"1")
    store.put("old.mp3", b"1")
    store.put("new.wav", b"1")
    past = time.time() - 7200
    for name in ("old.wav", "old.mp3"):
        os.utime(tmp_path / "blobs" / name, (past, past))
    assert store.mtime("old.wav") == pytest.approx(past, abs=1)
    assert store.mtime("new.wav") == pytest.approx(time.time(), abs=60)
    with pytest.raises(KeyError):
        store.mtime("missing.wav")
    assert store.delete_older_than(3600, suffix=".wav") == ["old.wav"]
    assert store.list() == ["new.wav", "old.mp3"]
    assert store.delete_older_than(3600) == ["old.mp3"]
    assert store.list() == ["new.wav"]


def test_rename(store: BlobStore) -> None:
    store.put("a", b"1")
    store.rename("a", "a.corrupt")
    assert store.list() == ["a.corrupt"]


BAD_NAMES = ["", ".", "..", "../x", "a/b", "a\\b", "..\\x", "/etc/passwd", "a..b", ".hidden", "a\x00b",
             "x\n", "-x", "sp ace", "a" * 202, "é.wav"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_unsafe_names_are_rejected_everywhere(store: BlobStore, name: str) -> None:
    with pytest.raises(ValueError):
        safe_name(name)
    for call in (lambda: store.put(name, b"1"), lambda: store.get(name), lambda: store.exists(name),
                 lambda: store.delete(name), lambda: store.mtime(name), lambda: store.rename("x", name)):
        with pytest.raises(ValueError):
            call()


def test_safe_names() -> None:
    for name in ("a", "voice_1.parquet", "task_0123abcd.wav", "A-b.c", "a" * 201):
        assert safe_name(name) == name
