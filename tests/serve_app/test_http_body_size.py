"""Huge request bodies against the running app: refused with 413 before they are read (by their
`Content-Length`, or as soon as a chunked body passes the limit), and the memory of the HTTP proxy
and the ingress replica stays flat. Prints the RSS of both before and after."""

from __future__ import annotations

import time

import psutil
import pytest

from tests.serve_app.http_helpers import post_large_body
from tts_core.limits import MAX_BODY_BYTES, MAX_MULTIPART_BODY_BYTES

BODY_BYTES = 200 * 2**20
#: Memory a refused body may cost a process beyond what its route accepts (a 50 MB upload is buffered
#: whole by Ray Serve's proxy and read by the ingress): far less than the 200 MB body itself.
GROWTH_MARGIN_MB = 32
#: The head of a file part, so a chunked upload is read as one until it passes the limit.
FILE_PART = (b'--x\r\nContent-Disposition: form-data; name="audio_file"; filename="big.wav"\r\n'
             b"Content-Type: audio/wav\r\n\r\n")


def rss_mb(title: str) -> float:
    """Resident memory of this session's processes (children of this test process) titled `title`."""
    total = 0
    for process in psutil.Process().children(recursive=True):
        try:
            if title in " ".join(process.cmdline()):
                total += process.memory_info().rss
        except psutil.Error:
            continue
    return total / 2**20


@pytest.mark.parametrize(("path", "content_type", "chunked"), [
    ("/api/v1/synthesize/sft", "application/json", False),
    ("/api/v1/synthesize/sft", "application/json", True),
    ("/api/v1/voices/", "multipart/form-data; boundary=x", False),
    ("/api/v1/voices/", "multipart/form-data; boundary=x", True),
], ids=["json-length", "json-chunked", "multipart-length", "multipart-chunked"])
def test_a_huge_body_is_refused_before_it_is_read(serve_cluster, path, content_type, chunked) -> None:
    titles = {"proxy": "ProxyActor", "ingress": f"ServeReplica:{serve_cluster['app_name']}:ApiIngress"}
    before = {name: rss_mb(title) for name, title in titles.items()}
    started = time.monotonic()
    multipart = content_type.startswith("multipart")
    prefix = FILE_PART if multipart else b'{"text": "'
    status, reply, sent = post_large_body(serve_cluster["base_url"], path, BODY_BYTES, content_type, chunked, prefix)
    seconds = time.monotonic() - started
    time.sleep(1.0)
    after = {name: rss_mb(title) for name, title in titles.items()}
    print(f"{path} {'chunked' if chunked else 'Content-Length'} {BODY_BYTES >> 20} MB: {status} after "
          f"{sent >> 20} MB sent, {seconds:.1f} s; RSS proxy {before['proxy']:.0f} -> {after['proxy']:.0f} MB, "
          f"ingress {before['ingress']:.0f} -> {after['ingress']:.0f} MB")
    assert status == 413, reply[:500]
    assert b'"payload_too_large"' in reply
    # What crossed the wire before the refusal, and what it cost, is bounded by the limit.
    limit = MAX_MULTIPART_BODY_BYTES if multipart else MAX_BODY_BYTES
    assert sent <= limit + 16 * 2**20
    for name in titles:
        assert after[name] - before[name] < limit / 2**20 + GROWTH_MARGIN_MB, (name, before, after)
