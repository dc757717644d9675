"""A flat store of named blobs on any filesystem pyarrow knows (local disk, S3, GCS, HDFS...).

Voices and synthesized audio both live here, so the same code serves a laptop (a local folder) and
a cluster (a bucket every replica can reach). Names come from clients (audio download URLs, voice
ids), so every method validates them: nothing can resolve outside the store's folder.

Credentials come from the filesystem's standard sources (for S3: the AWS environment variables,
config files or the machine's role). A URI may carry some too (`s3://KEY:SECRET@bucket/...`);
`redact_uri` is what the store shows of it, in its repr and in logs.
"""

from __future__ import annotations

import os
import random
import re
import time
import uuid
from urllib.parse import urlsplit, urlunsplit

import pyarrow.fs as pafs

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,200}")
#: Prefix of in-progress writes; the leading dot keeps them out of `list` (they fail `safe_name`).
_TMP_PREFIX = ".tmp-"
#: Folder of the claims writers put while they create a blob on an object store (see `BlobStore.create`).
_CLAIMS_DIR = ".claims"
_CLAIM_ID_RE = re.compile(r"[0-9a-f]{32}")
#: A claim is held for the length of one object write; one older than this is a crashed writer's and is ignored.
CLAIM_STALE_S = 60.0
#: How long `create` waits for other writers of the same name before giving up.
CLAIM_WAIT_S = 30.0
#: Filesystems where one upload of an object is atomic and a move is a copy then a delete: blobs are written in place.
_OBJECT_STORES = frozenset({"s3", "gcs", "abfs"})


def redact_uri(uri: str) -> str:
    """`uri` with the credentials it may carry (its user info) replaced by `***`."""
    parts = urlsplit(uri)
    if "://" not in uri or "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc=f"***@{parts.netloc.rsplit('@', 1)[1]}"))


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
        #: The URI without credentials: what logs and reprs show.
        self.display_uri = redact_uri(uri)
        self._fs, root = pafs.FileSystem.from_uri(uri)
        self._root = root.rstrip("/")
        self._object_store = self._fs.type_name in _OBJECT_STORES
        self._fs.create_dir(self._root, recursive=True)

    def __repr__(self) -> str:
        return f"BlobStore({self.display_uri!r})"

    def _path(self, name: str) -> str:
        return f"{self._root}/{safe_name(name)}"

    def put(self, name: str, data: bytes) -> None:
        """Write `data` under `name` atomically: readers see the old blob or the new one, never a partial file.

        On an object store the object is uploaded in place: it becomes visible only when its upload
        completes, whole (a killed writer leaves the old object). Elsewhere the data goes to a
        temporary file that is then renamed over the old one.
        """
        target = self._path(name)
        if self._object_store:
            self._write(target, data)
            return
        tmp = self._tmp_path(name)
        try:
            self._write(tmp, data)
            self._fs.move(tmp, target)
        except BaseException:
            self._delete_path(tmp)
            raise

    def create(self, name: str, data: bytes) -> None:
        """Write `data` under `name` only if no blob has that name, else raise FileExistsError.

        Of several writers racing for one name, in this process or any other, exactly one wins. On
        a local disk the new file is hard-linked into place, which fails if the name is taken. On an
        object store (pyarrow.fs has no conditional write) each writer puts a claim object of its
        own and writes only if its claim is the only one; where several see each other, all
        withdraw and retry after a random pause (see `_claim`).
        """
        target = self._path(name)
        if isinstance(self._fs, pafs.LocalFileSystem):
            tmp = self._tmp_path(name)
            try:
                self._write(tmp, data)
                os.link(tmp, target)
            finally:
                self._delete_path(tmp)
            return
        claim, pause, deadline = None, 0.02, time.monotonic() + CLAIM_WAIT_S
        while (claim := self._claim(name)) is None:
            if self.exists(name):
                raise FileExistsError(name)
            if time.monotonic() > deadline:
                raise TimeoutError(f"other writers kept claiming blob {name!r} for {CLAIM_WAIT_S:.0f} s")
            time.sleep(random.uniform(0, pause))
            pause = min(2 * pause, 1.0)
        try:
            if self.exists(name):
                raise FileExistsError(name)
            self._write(target, data)
        finally:
            self._delete_path(claim)

    def _claim(self, name: str) -> str | None:
        """Put a claim on `name`; its path if no other live claim exists, else None (and the claim is withdrawn).

        Safe with a strongly consistent store (S3, GCS): of two writers, the later one to put its
        claim lists after the earlier one's claim exists, so at most one of them sees only its own.
        Ages are compared by the store's own clock (the claims' modification times).
        """
        folder = f"{self._root}/{_CLAIMS_DIR}"
        own = f"{folder}/{name}.{uuid.uuid4().hex}"
        self._write(own, b"")
        infos = self._fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
        claims = {info.path: info.mtime.timestamp() for info in infos
                  if info.type == pafs.FileType.File and info.base_name.startswith(f"{name}.")
                  and _CLAIM_ID_RE.fullmatch(info.base_name[len(name) + 1:])}
        if own in claims and all(claims[own] - claimed > CLAIM_STALE_S for path, claimed in claims.items()
                                 if path != own):
            return own
        self._delete_path(own)
        return None

    def get(self, name: str) -> bytes:
        """The blob's bytes; KeyError if there is none."""
        path = self._path(name)
        try:
            # A random-access file: its size is known, so an object store serves it in one request.
            with self._fs.open_input_file(path) as stream:
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

    def _tmp_path(self, name: str) -> str:
        return f"{self._root}/{_TMP_PREFIX}{uuid.uuid4().hex}-{safe_name(name)}"

    def _write(self, path: str, data: bytes) -> None:
        with self._fs.open_output_stream(path) as out:
            out.write(data)

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
