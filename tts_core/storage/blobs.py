"""A flat store of named blobs on any filesystem pyarrow knows (local disk, S3, GCS, HDFS...).

Voices and synthesized audio both live here, so the same code serves a laptop (a local folder) and
a cluster (a bucket every replica can reach). Names come from clients (audio download URLs, voice
ids), so every method validates them: nothing can resolve outside the store's folder.
"""

from __future__ import annotations

import os
import re
import time
import uuid

import pyarrow.fs as pafs

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,200}")
#: Prefix of in-progress writes; the leading dot keeps them out of `list` (they fail `safe_name`).
_TMP_PREFIX = ".tmp-"


def safe_name(name: str) -> str:
    """Return `name` if it is a plain file name inside the store, else raise ValueError.

    Separators, `..`, NUL and leading dots are refused outright, whatever the filesystem would make of them.
    """
    if (not isinstance(name, str) or "/" in name or "\\" in name or ".." in name or "\x00" in name
            or name.startswith(".") or not _NAME_RE.fullmatch(name)):
        raise ValueError(f"Invalid blob name: {name!r}")
    return name


class BlobStore:
    """Named blobs directly inside one folder of a pyarrow filesystem."""

    def __init__(self, uri: str) -> None:
        """`uri` is anything `pyarrow.fs.FileSystem.from_uri` accepts, or a local path (relative or absolute)."""
        if "://" not in uri and not uri.startswith("file:"):
            uri = os.path.abspath(uri)
        self.uri = uri
        self._fs, root = pafs.FileSystem.from_uri(uri)
        self._root = root.rstrip("/")
        self._fs.create_dir(self._root, recursive=True)

    def __repr__(self) -> str:
        return f"BlobStore({self.uri!r})"

    def _path(self, name: str) -> str:
        return f"{self._root}/{safe_name(name)}"

    def put(self, name: str, data: bytes) -> None:
        """Write `data` under `name` atomically: readers see the old blob or the new one, never a partial file."""
        target = self._path(name)
        tmp = f"{self._root}/{_TMP_PREFIX}{uuid.uuid4().hex}-{name}"
        try:
            with self._fs.open_output_stream(tmp) as out:
                out.write(data)
            self._fs.move(tmp, target)
        except BaseException:
            self._delete_path(tmp)
            raise

    def get(self, name: str) -> bytes:
        """The blob's bytes; KeyError if there is none."""
        path = self._path(name)
        try:
            with self._fs.open_input_stream(path) as stream:
                return stream.read()
        except FileNotFoundError:
            raise KeyError(name) from None
        except OSError:
            # Object stores do not always say "not found" with FileNotFoundError.
            if not self.exists(name):
                raise KeyError(name) from None
            raise

    def exists(self, name: str) -> bool:
        return self._fs.get_file_info(self._path(name)).type == pafs.FileType.File

    def delete(self, name: str) -> None:
        """Remove the blob; deleting a missing blob is not an error (retention and clients may race)."""
        self._delete_path(self._path(name))

    def rename(self, src: str, dst: str) -> None:
        """Move a blob to another name in the store, replacing any blob already there."""
        self._fs.move(self._path(src), self._path(dst))

    def list(self, suffix: str = "") -> list[str]:
        """Sorted names of the blobs directly in the store that end with `suffix` (in-progress writes excluded)."""
        infos = self._fs.get_file_info(pafs.FileSelector(self._root, allow_not_found=True))
        names = (info.base_name for info in infos if info.type == pafs.FileType.File)
        return sorted(name for name in names if name.endswith(suffix) and _is_safe(name))

    def mtime(self, name: str) -> float:
        """Last modification time, epoch seconds; KeyError if there is no such blob."""
        info = self._fs.get_file_info(self._path(name))
        if info.type != pafs.FileType.File:
            raise KeyError(name)
        return info.mtime.timestamp()

    def delete_older_than(self, max_age_s: float, suffix: str = "") -> list[str]:
        """Delete blobs ending with `suffix` last modified over `max_age_s` ago; returns their names."""
        cutoff = time.time() - max_age_s
        infos = self._fs.get_file_info(pafs.FileSelector(self._root, allow_not_found=True))
        expired = sorted(info.base_name for info in infos
                         if info.type == pafs.FileType.File and info.base_name.endswith(suffix)
                         and _is_safe(info.base_name) and info.mtime.timestamp() < cutoff)
        for name in expired:
            self.delete(name)
        return expired

    def _delete_path(self, path: str) -> None:
        try:
            self._fs.delete_file(path)
        except FileNotFoundError:
            pass


def _is_safe(name: str) -> bool:
    try:
        safe_name(name)
    except ValueError:
        return False
    return True
