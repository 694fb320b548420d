"""End to end: the metrics endpoint of a server with an auth token (Bearer) and with TLS.

With --auth-token, /metrics and /stats answer 401 unless the request carries
`Authorization: Bearer <token>`; with --tls-cert they are served over HTTPS
with the same certificate. Requests go through urllib in a worker thread.
"""

from __future__ import annotations

import asyncio
import http.client
import re
import socket
import ssl
import time
import urllib.error
import urllib.request

import pytest
from certificates import TlsFiles
from polling import until_true

from wonderq_client import AuthFailed, connect
from wonderq_server.auth import AUTH_FAILURE_DELAY_S

TOKEN = "metrics-s3cret"
METRICS_LINE = re.compile(r"metrics on (https?)://(\S+):(\d+)/metrics")
TIMEOUT_S = 10.0


def metrics_url(server, path: str) -> str:
    match = METRICS_LINE.search(server.log)
    assert match, "no metrics line in the log:\n" + server.log
    return f"{match.group(1)}://{match.group(2)}:{match.group(3)}{path}"


def http_get(url: str, authorization: str | None = None,
             context: ssl.SSLContext | None = None) -> tuple[int, dict[str, str], bytes]:
    headers = {"Authorization": authorization} if authorization is not None else {}
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S, context=context) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


@pytest.mark.parametrize("path", ["/metrics", "/stats", "/nowhere"])
async def test_without_the_bearer_token_everything_is_401(server_factory, path):
    server = server_factory("--metrics-port", "0", "--auth-token", TOKEN)
    status, headers, body = await asyncio.to_thread(http_get, metrics_url(server, path))
    assert status == 401
    assert headers["www-authenticate"].startswith("Bearer")
    assert b"wonderq_" not in body and TOKEN.encode() not in body


@pytest.mark.parametrize("authorization", ["Bearer wrong", f"Basic {TOKEN}", TOKEN])
async def test_a_wrong_bearer_token_is_401_a_second_late_and_counted(server_factory,
                                                                     authorization):
    server = server_factory("--metrics-port", "0", "--auth-token", TOKEN)
    started = time.monotonic()
    status, _, body = await asyncio.to_thread(http_get, metrics_url(server, "/metrics"),
                                              authorization)
    assert status == 401 and b"wonderq_" not in body
    assert time.monotonic() - started >= AUTH_FAILURE_DELAY_S * 0.9
    async with connect(server.host, server.port, auth_token=TOKEN) as client:
        assert (await client.stats())["server"]["auth_failures_total"] == 1


async def test_with_the_bearer_token_metrics_are_served(server_factory):
    server = server_factory("--metrics-port", "0", "--auth-token", TOKEN)
    with pytest.raises(AuthFailed):
        await connect(server.host, server.port, auth_token="wrong")
    status, _, body = await asyncio.to_thread(http_get, metrics_url(server, "/metrics"),
                                              f"Bearer {TOKEN}")
    assert status == 200
    assert "wonderq_auth_failures_total 1.0" in body.decode()


async def test_metrics_over_tls(server_factory, tmp_path):
    files = TlsFiles.make(tmp_path)
    server = server_factory("--metrics-port", "0", "--auth-token", TOKEN,
                            *files.server_flags())
    url = metrics_url(server, "/stats")
    assert url.startswith("https://")
    status, _, body = await asyncio.to_thread(http_get, url, f"Bearer {TOKEN}",
                                              files.client_context())
    assert status == 200 and b'"tls": true' in body
    # A plain HTTP request to the TLS port is dropped without an answer.
    with pytest.raises((OSError, http.client.HTTPException)):
        await asyncio.to_thread(http_get, url.replace("https://", "http://"),
                                f"Bearer {TOKEN}")
    # ... and logged, naming the port (the message port's context is another).
    async with connect(server.host, server.port, ssl=files.client_context(),
                       auth_token=TOKEN) as client:
        stats = (await client.stats())["server"]
    assert stats["tls_handshake_failures_total"] == 1
    await until_true(lambda: "a TLS handshake on the metrics port failed: HTTP_REQUEST"
                     in server.log)  # the log is read by another thread


async def test_metrics_handshakes_count_toward_metrics_max_connections(server_factory,
                                                                      tmp_path):
    # A reviewer's silent TCP connections to the metrics TLS port were counted by nothing
    # until their handshakes ended (asyncio makes the HTTP connection only then), and each
    # held a descriptor for asyncio's 60 s. Now a handshake in progress holds one of
    # --metrics-max-connections, and one past them is closed at once.
    files = TlsFiles.make(tmp_path)
    server = server_factory("--metrics-port", "0", "--metrics-max-connections", "2",
                            "--metrics-timeout", "60", "--tls-handshake-timeout", "60",
                            *files.server_flags())
    url = metrics_url(server, "/stats")
    host, port = url.removeprefix("https://").removesuffix("/stats").rsplit(":", 1)
    silent = [socket.create_connection((host, int(port)), timeout=TIMEOUT_S)
              for _ in range(2)]
    try:
        # Accepted in the order they connected: these are the ones over the limit, closed
        # by the server at once, not when a timeout of 60 s runs out.
        for _ in range(3):
            with socket.create_connection((host, int(port)), timeout=TIMEOUT_S) as extra:
                assert await asyncio.to_thread(extra.recv, 100) == b""
        await until_true(lambda: "(--metrics-max-connections), handshakes in progress "
                         "included" in server.log)  # the log is read by another thread
    finally:
        for sock in silent:
            sock.close()
    # Once those are gone, a scraper gets in (each try is an event: the server's answer).
    for _ in range(50):
        try:
            status, _, body = await asyncio.to_thread(http_get, url, None,
                                                      files.client_context())
            break
        except (OSError, http.client.HTTPException):
            continue
    else:
        raise AssertionError("no scrape got in after the silent connections closed")
    assert status == 200 and b'"tls_handshake_failures_total": 3' in body


async def test_a_metrics_handshake_ends_at_the_metrics_timeout(server_factory, tmp_path):
    # README: the endpoint drops a connection still open --metrics-timeout after it was
    # accepted; over TLS that held only from the handshake's end (asyncio's 60 s before).
    files = TlsFiles.make(tmp_path)
    server = server_factory("--metrics-port", "0", "--metrics-timeout", "0.3",
                            *files.server_flags())  # --tls-handshake-timeout 10, longer
    url = metrics_url(server, "/stats")
    host, port = url.removeprefix("https://").removesuffix("/stats").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=TIMEOUT_S) as silent:
        assert await asyncio.to_thread(silent.recv, 100) == b""
