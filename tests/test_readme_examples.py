"""README's Python examples, run as written against the real server.

A reviewer ran the "Queue features" block and it raised QueueNotFound; these
tests keep every example that needs only a server running. Each runs in its
own interpreter (the first calls asyncio.run itself), with only the address
changed: connect() and connect("127.0.0.1", 7711) point at the test's server.
The TLS example needs a certificate and a token, so it is not run here
(test_e2e_tls.py covers what it does); the recipe that makes a certificate is.
"""

from __future__ import annotations

import re
import shutil
import signal
import ssl
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from polling import EVENT_TIMEOUT_S, until_stats

from wonderq_client import connect

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
# The Worker example runs until a signal: test_the_worker_example_... runs it that way.
WORKER = [block for block in BLOCKS if "Worker(" in block]
RUNNABLE = [block for block in BLOCKS if "ssl" not in block and "Worker(" not in block]


def as_program(block: str, port: int) -> str:
    """as_program: the block pointed at `port`; a fragment of awaits gets a main()."""
    address = f'connect("127.0.0.1", {port})'
    code = block.replace('connect("127.0.0.1", 7711)', address).replace("connect()", address)
    if "asyncio.run(" in code:
        return code
    return ("import asyncio\nfrom wonderq_client import connect\n\nasync def main():\n"
            + textwrap.indent(code, "    ") + "\nasyncio.run(main())\n")


def test_the_readme_has_the_examples_this_file_runs():
    assert len(BLOCKS) == 4 and len(RUNNABLE) == 2 and len(WORKER) == 1


@pytest.mark.parametrize("index", range(len(RUNNABLE)))
def test_a_readme_example_runs_as_written(server, index):
    done = subprocess.run([sys.executable, "-c", as_program(RUNNABLE[index], server.port)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr


async def test_the_worker_example_handles_messages_and_stops_on_sigterm(server):
    program = WORKER[0].replace("port=7711", f"port={server.port}")
    proc = subprocess.Popen([sys.executable, "-c", program], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        async with connect(server.host, server.port) as client:
            await client.put_many("emails", [b"one", b"two", b"three"])
            await until_stats(client, lambda s: s["queues"]["emails"]["acked_total"] == 3)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=EVENT_TIMEOUT_S)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert sorted(out.splitlines()[:3]) == ["sending b'one'", "sending b'three'",
                                            "sending b'two'"]
    assert "stopped: WorkerCounts(received=3, acked=3, failed=0" in out


CERTIFICATE_BLOCK = re.search(r"```sh\n(openssl req -x509.*?)```", README.read_text(), re.S)


async def test_the_certificate_recipe_makes_what_a_tls_server_and_client_take(
        server_factory, tmp_path):
    # The recipe as written, for the name and address this test connects to: the server
    # starts with its certificate, and a client that trusts ca.pem alone connects by
    # either, which it only does if the subjectAltName holds both.
    assert CERTIFICATE_BLOCK, "README's certificate recipe is gone"
    if shutil.which("openssl") is None:  # .ci/run installs it
        pytest.skip("README's certificate recipe needs the openssl command")
    recipe = CERTIFICATE_BLOCK.group(1).replace("mq.internal", "localhost").replace(
        "10.0.0.5", "127.0.0.1")
    done = subprocess.run(["bash", "-euc", recipe], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    server = server_factory("--tls-cert", str(tmp_path / "server.pem"),
                            "--tls-key", str(tmp_path / "server.key"))
    context = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    # Python 3.13 checks this strictly by default: a CA without keyUsage is refused there
    # (a reviewer), so 3.11 and 3.12 are made to check it too.
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    for host in ("localhost", "127.0.0.1"):
        async with connect(host, server.port, ssl=context) as client:
            assert await client.put("tls", b"x") > 0
