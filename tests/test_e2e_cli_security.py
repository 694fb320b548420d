"""End to end: the `wonderq` tool against a real server with an auth token and TLS.

Each test runs the console script as a subprocess (test_e2e_cli.py's `cli`)
with --auth-token / WONDERQ_AUTH_TOKEN and --tls-ca, and checks the exit
codes main.py promises: 0 done, 1 refused (AUTH_FAILED, AUTH_REQUIRED), 2 not
reached or bad usage (a plain connection to a TLS port, an unusable file).
"""

from __future__ import annotations

import json
import shlex
import sys

import pytest
import trustme
from certificates import TlsFiles
from polling import EVENT_TIMEOUT_S
from test_e2e_cli import at, cli
from test_e2e_cli_work import stop, work
from test_e2e_demo import accounting, run_demo

from wonderq_cli.top import Poll, Poller
from wonderq_client import connect

TOKEN = "cli-s3cret"


@pytest.fixture
def tls_files(tmp_path) -> TlsFiles:
    return TlsFiles.make(tmp_path)


@pytest.fixture
def secured(server_factory, tls_files):
    return server_factory(*tls_files.server_flags(), "--auth-token", TOKEN)


async def test_stats_with_the_token_and_the_ca(secured, tls_files):
    done = await cli("stats", "--json", *at(secured), "--auth-token", TOKEN,
                     "--tls-ca", str(tls_files.ca))
    assert done.returncode == 0, done.stderr
    server = json.loads(done.stdout)["server"]
    assert server["tls"] is True and server["auth_failures_total"] == 0


async def test_token_from_the_environment_put_and_receive(secured, tls_files):
    env = {"WONDERQ_AUTH_TOKEN": TOKEN}
    tls = ["--tls-ca", str(tls_files.ca)]
    done = await cli("put", "jobs", "hello", *at(secured), *tls, env=env)
    assert done.returncode == 0, done.stderr
    done = await cli("receive", "jobs", "--ack", "--json", *at(secured), *tls, env=env)
    assert done.returncode == 0, done.stderr
    assert [m["body"] for m in json.loads(done.stdout)] == ["hello"]


async def test_a_wrong_token_is_one_line_and_exit_1(secured, tls_files):
    done = await cli("stats", *at(secured), "--auth-token", "wrong-guess",
                     "--tls-ca", str(tls_files.ca))
    assert done.returncode == 1
    assert done.stderr.decode().splitlines() == [
        "wonderq: AUTH_FAILED: wrong auth token; the connection closes"]
    assert done.stdout == b""


async def test_no_token_is_auth_required_and_exit_1(secured, tls_files):
    done = await cli("queues", *at(secured), "--tls-ca", str(tls_files.ca))
    assert done.returncode == 1
    assert done.stderr.decode().startswith("wonderq: AUTH_REQUIRED: ")


async def test_a_plain_connection_to_a_tls_port_says_so(secured):
    done = await cli("stats", *at(secured), "--auth-token", TOKEN)
    assert done.returncode == 2
    assert "add --tls or --tls-ca" in done.stderr.decode()


async def test_a_server_certificate_the_cli_does_not_trust_is_exit_2(secured, tls_files):
    done = await cli("stats", *at(secured), "--auth-token", TOKEN,
                     "--tls-ca", str(tls_files.other_ca))
    assert done.returncode == 2
    assert "CERTIFICATE_VERIFY_FAILED" in done.stderr.decode()


@pytest.mark.parametrize(("flags", "message"), [
    (["--tls-ca", "/nonexistent/ca.pem"], "cannot use --tls-ca /nonexistent/ca.pem"),
    (["--tls-key", "/nonexistent/k.pem"], "--tls-key needs --tls-cert"),
    (["--tls-cert", "/nonexistent/c.pem"], "cannot use --tls-cert /nonexistent/c.pem"),
])
async def test_unusable_tls_flags_are_exit_2(secured, flags, message):
    done = await cli("stats", *at(secured), *flags)
    assert done.returncode == 2
    assert message in done.stderr.decode() and b"Traceback" not in done.stderr


async def test_a_client_certificate_without_its_key_says_the_key_is_missing(secured,
                                                                             tls_files):
    # A newcomer gave a certificate alone and was told "not PEM, or a key that does not
    # match" (the CA's certificate is such a file: a certificate and no key).
    done = await cli("stats", *at(secured), "--tls-cert", str(tls_files.ca))
    assert done.returncode == 2
    assert done.stderr.decode() == (f"wonderq: cannot use --tls-cert {tls_files.ca}: it holds "
                                    "no private key: give its key with --tls-key\n")


async def test_no_client_certificate_for_a_server_with_tls_ca_says_so(server_factory,
                                                                       tls_files):
    server = server_factory(*tls_files.server_flags(require_client_cert=True))
    done = await cli("stats", *at(server), "--tls-ca", str(tls_files.ca))
    assert done.returncode == 2
    assert "add --tls-cert" in done.stderr.decode() and b"Traceback" not in done.stderr


async def test_a_client_certificate_the_server_does_not_trust_says_so(server_factory,
                                                                      tls_files, tmp_path):
    # A reviewer's certificate from another CA had only "connection to the server closed".
    stranger = tmp_path / "stranger.pem"
    trustme.CA().issue_cert("client@example.org").private_key_and_cert_chain_pem \
        .write_to_path(str(stranger))
    server = server_factory(*tls_files.server_flags(require_client_cert=True))
    done = await cli("stats", *at(server), "--tls-ca", str(tls_files.ca),
                     "--tls-cert", str(stranger))
    assert done.returncode == 2
    assert "its --tls-ca must have signed this --tls-cert" in done.stderr.decode(), done


async def test_a_client_certificate_for_a_server_with_tls_ca(server_factory, tls_files):
    server = server_factory(*tls_files.server_flags(require_client_cert=True))
    done = await cli("stats", "--json", *at(server), "--tls-ca", str(tls_files.ca),
                     "--tls-cert", str(tls_files.client_cert))
    assert done.returncode == 0, done.stderr


async def test_top_polls_with_the_token_and_tls(secured, tls_files):
    async with connect(secured.host, secured.port, auth_token=TOKEN,
                       ssl=tls_files.client_context()) as client:
        await client.put("watched", b"x")
    poller = Poller(secured.host, secured.port, 10.0,
                    {"auth_token": TOKEN, "ssl": tls_files.client_context()})
    try:
        assert await poller.poll() is Poll.FRESH
        assert poller.stats["queues"]["watched"]["ready"] == 1
    finally:
        await poller.close()


def test_demo_connect_with_the_token_and_tls(secured, tls_files):
    result = run_demo("--connect", *at(secured), "--auth-token", TOKEN,
                      "--tls-ca", str(tls_files.ca), "--messages", "20", "--seconds", "10")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = accounting(result.stdout)
    assert rows["produced"] == 20 == rows["acked"] + rows["dead-lettered"]
    assert rows["lost"] == 0


async def test_tls_settings_from_the_environment(server_factory, tls_files):
    server = server_factory(*tls_files.server_flags(require_client_cert=True))
    env = {"WONDERQ_CLIENT_TLS_CA": str(tls_files.ca),
           "WONDERQ_CLIENT_TLS_CERT": str(tls_files.client_cert)}
    done = await cli("stats", "--json", *at(server), env=env)
    assert done.returncode == 0, done.stderr
    # A flag given wins over its variable.
    done = await cli("stats", *at(server), "--tls-ca", "/nonexistent/ca.pem", env=env)
    assert done.returncode == 2 and b"cannot use --tls-ca /nonexistent/ca.pem" in done.stderr


@pytest.mark.parametrize(("env", "message"), [
    ({"WONDERQ_CLIENT_TLS": "maybe"}, "WONDERQ_CLIENT_TLS='maybe': must be 1, true, yes or on"),
    ({"WONDERQ_CLIENT_TLS_CA": "/nonexistent/ca.pem"},
     "cannot use WONDERQ_CLIENT_TLS_CA /nonexistent/ca.pem"),
    ({"WONDERQ_CLIENT_TLS_KEY": "k.pem"}, "WONDERQ_CLIENT_TLS_KEY needs --tls-cert"),
])
async def test_unusable_tls_variables_are_exit_2(secured, env, message):
    done = await cli("stats", *at(secured), env=env)
    assert done.returncode == 2
    assert message in done.stderr.decode() and b"Traceback" not in done.stderr


async def test_wonderq_tls_alone_connects_with_tls(server_factory, tls_files):
    # WONDERQ_CLIENT_TLS=1 alone verifies against the system's CAs, which do not hold this test's
    # CA: refused for the certificate, which shows the connection tried TLS.
    server = server_factory(*tls_files.server_flags())
    done = await cli("stats", *at(server), env={"WONDERQ_CLIENT_TLS": "yes"})
    assert done.returncode == 2 and b"certificate" in done.stderr, done.stderr


async def test_work_gives_its_programs_the_tls_settings(secured, tls_files, monkeypatch,
                                                       tmp_path):
    monkeypatch.setenv("WONDERQ_AUTH_TOKEN", TOKEN)  # the tool's own environment
    monkeypatch.chdir(tmp_path)
    ca = tmp_path / "relative-ca.pem"
    ca.write_bytes(tls_files.ca.read_bytes())
    program = (f"{shlex.quote(sys.executable)} -m wonderq_cli put followups "
               '"after $WONDERQ_MESSAGE_ID"')
    async with connect(secured.host, secured.port, auth_token=TOKEN,
                       ssl=tls_files.client_context()) as client:
        msg_id = await client.put("jobs", b"x")
        # The CA as a relative path: a program may run elsewhere, so it gets it absolute.
        with work(secured, "jobs", "--tls-ca", ca.name, "--", "sh", "-c",
                  f"cd /; {program}") as proc:
            [followup] = await client.receive("followups", wait=EVENT_TIMEOUT_S)
            code, _, err = stop(proc)
        assert followup.body == f"after {msg_id}".encode()
        assert code == 0, err


async def test_the_servers_tls_variables_are_not_the_tools(server, tls_files):
    # A shell set up to start a TLS server (config.py's WONDERQ_TLS_* name the server's own
    # files) must not make the tool present the server's key, or speak TLS to a plain port.
    env = {"WONDERQ_TLS_CA": str(tls_files.ca), "WONDERQ_TLS_CERT": str(tls_files.cert),
           "WONDERQ_TLS_KEY": str(tls_files.key)}
    done = await cli("put", "plain", "x", *at(server), env=env)
    assert done.returncode == 0, done.stderr


async def test_work_passes_no_tls_setting_it_was_given_empty(server, monkeypatch):
    # `--tls-ca "$UNSET"` is no CA: the tool runs plain, and so must its programs (an
    # empty path made absolute would be the working directory).
    program = f"{shlex.quote(sys.executable)} -m wonderq_cli put followups done"
    monkeypatch.delenv("WONDERQ_CLIENT_TLS_CA", raising=False)
    async with connect(server.host, server.port) as client:
        await client.put("jobs", b"x")
        with work(server, "jobs", "--tls-ca", "", "--", "sh", "-c", program) as proc:
            [followup] = await client.receive("followups", wait=EVENT_TIMEOUT_S)
            code, _, err = stop(proc)
        assert followup.body == b"done"
        assert code == 0, err


async def test_no_tls_reaches_a_plain_port_from_a_shell_set_up_for_tls(server, tls_files):
    env = {"WONDERQ_CLIENT_TLS": "1", "WONDERQ_CLIENT_TLS_CA": str(tls_files.ca)}
    done = await cli("put", "plain", "x", *at(server), env=env)
    assert done.returncode == 2, done.stderr  # TLS to a plain port: not reached
    for args in (("put", "plain", "x", "--no-tls"), ("--no-tls", "put", "plain", "x")):
        done = await cli(*args, *at(server), env=env)
        assert done.returncode == 0, done.stderr
    async with connect(server.host, server.port) as client:
        assert len(await client.receive("plain", max=10)) == 2


@pytest.mark.parametrize("flags", [("--tls",), ("--tls-ca", "ca.pem"), ("--tls-cert", "c.pem"),
                                   ("--tls-cert", "c.pem", "--tls-key", "k.pem")])
async def test_no_tls_with_a_tls_flag_is_refused(server, flags):
    done = await cli("stats", *at(server), "--no-tls", *flags)
    assert done.returncode == 2
    assert f"--no-tls contradicts {flags[0]}" in done.stderr.decode()
    assert b"Traceback" not in done.stderr


async def test_work_with_no_tls_runs_its_programs_plain(server, tls_files, monkeypatch):
    # The programs inherit the tool's environment; its TLS variables would send their
    # `wonderq put` over TLS to the plain port the run itself reached with --no-tls.
    monkeypatch.setenv("WONDERQ_CLIENT_TLS", "1")
    monkeypatch.setenv("WONDERQ_CLIENT_TLS_CA", str(tls_files.ca))
    program = f"{shlex.quote(sys.executable)} -m wonderq_cli put followups done"
    async with connect(server.host, server.port) as client:
        await client.put("jobs", b"x")
        with work(server, "jobs", "--no-tls", "--", "sh", "-c", program) as proc:
            [followup] = await client.receive("followups", wait=EVENT_TIMEOUT_S)
            code, _, err = stop(proc)
        assert followup.body == b"done"
        assert code == 0, err


async def test_no_tls_warns_when_the_token_of_a_shell_set_up_for_tls_goes_plain(server_factory,
                                                                                tls_files):
    server = server_factory("--auth-token", TOKEN)  # plain, with a token
    warning = (b"wonderq: warning: --no-tls sends the token in WONDERQ_AUTH_TOKEN in plain "
               b"text, though WONDERQ_CLIENT_TLS_CA is set for TLS")
    tls_shell = {"WONDERQ_AUTH_TOKEN": TOKEN, "WONDERQ_CLIENT_TLS_CA": str(tls_files.ca)}
    done = await cli("put", "plain", "x", *at(server), "--no-tls", env=tls_shell)
    assert done.returncode == 0 and warning in done.stderr, done.stderr
    # No warning where nothing says the token is a TLS server's, or where it was given.
    for args, env in (((), {"WONDERQ_AUTH_TOKEN": TOKEN}),
                      (("--auth-token", TOKEN), {"WONDERQ_CLIENT_TLS_CA": str(tls_files.ca)})):
        done = await cli("put", "plain", "x", *at(server), "--no-tls", *args, env=env)
        assert done.returncode == 0 and b"warning" not in done.stderr, done.stderr


async def test_no_tls_to_a_tls_port_says_to_drop_it(server_factory, tls_files):
    server = server_factory(*tls_files.server_flags())
    done = await cli("stats", *at(server), "--no-tls")
    assert done.returncode == 2
    assert b"if the server uses TLS, drop --no-tls" in done.stderr, done.stderr
