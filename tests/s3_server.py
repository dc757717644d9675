"""A real S3-protocol server for the tests: moto's standalone server in its own process, on loopback.

The stores reach it through pyarrow's own S3 client, exactly as they reach a bucket in production:
the endpoint is in the store URI (`?endpoint_override=...&scheme=http`), the credentials come from
the standard AWS environment variables, which the fixture sets for the test process and so for
every Ray process it starts.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pyarrow.fs as pafs

from serve_app.local import free_port

BUCKET = "cosyvoice-test"
#: Credentials of the test server; the secret is unique per run so a test can search logs for it.
ACCESS_KEY = "AKIATESTCOSYVOICE"


class S3Server:
    """The running server: `uri(prefix)` is a store URI under a fresh folder of the test bucket."""

    def __init__(self, port: int, secret_key: str):
        self.port, self.secret_key = port, secret_key
        self.endpoint = f"127.0.0.1:{port}"

    @property
    def environment(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_DEFAULT_REGION": "us-east-1"}

    def uri(self, prefix: str) -> str:
        return f"s3://{BUCKET}/{prefix}-{uuid.uuid4().hex[:8]}?endpoint_override={self.endpoint}&scheme=http"

    def filesystem(self) -> pafs.S3FileSystem:
        return pafs.S3FileSystem(access_key=ACCESS_KEY, secret_key=self.secret_key, endpoint_override=self.endpoint,
                                 scheme="http", region="us-east-1", allow_bucket_creation=True)

    def keys(self, uri: str) -> list[str]:
        """Every object under a store URI's folder, recursively (claims and temporaries included)."""
        _, root = pafs.FileSystem.from_uri(uri)
        infos = self.filesystem().get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
        return sorted(info.path[len(root) + 1:] for info in infos if info.type == pafs.FileType.File)


@contextmanager
def s3_server(log_dir: Path) -> Iterator[S3Server]:
    """Start moto's server, create the test bucket and export the credentials; undo all three after."""
    port = free_port()
    server = S3Server(port, secret_key=f"secret-{uuid.uuid4().hex}")
    log = (log_dir / "moto.log").open("w")
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    saved = {key: os.environ.get(key) for key in server.environment}
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (log_dir / "moto.log").read_text()[-2000:]
            try:
                httpx.get(f"http://{server.endpoint}/", timeout=2)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "the S3 server did not start"
                time.sleep(0.2)
        os.environ.update(server.environment)
        server.filesystem().create_dir(BUCKET)
        yield server
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()
