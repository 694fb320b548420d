"""Tests of config.py: the security flags (the auth token and TLS files, and their
errors), --in-memory against a data directory, and --journal-reserve.

A refused setting stops start-up with argparse's usage error (exit code 2) and
a message on stderr; the token itself never appears there, in --help, or in
Config's repr.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from wonderq_server import config as config_module
from wonderq_server.config import build_parser, parse_config

MIB = 1024 * 1024

TOKEN = "s3cret-token-123"


def refused(capsys, argv: list[str], environ: dict[str, str] | None = None) -> str:
    with pytest.raises(SystemExit) as info:
        parse_config(argv, environ or {})
    assert info.value.code == 2
    return capsys.readouterr().err


def test_no_token_and_no_tls_by_default():
    config = parse_config([], {})
    assert config.auth_token is None
    assert (config.tls_cert, config.tls_key, config.tls_ca) == (None, None, None)


def test_token_from_the_flag_and_from_the_environment():
    assert parse_config(["--auth-token", TOKEN], {}).auth_token == TOKEN.encode()
    assert parse_config([], {"WONDERQ_AUTH_TOKEN": TOKEN}).auth_token == TOKEN.encode()
    # A flag beats the environment, as for every setting.
    assert parse_config(["--auth-token", "other"],
                        {"WONDERQ_AUTH_TOKEN": TOKEN}).auth_token == b"other"


def test_token_from_a_file(tmp_path):
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    assert parse_config(["--auth-token-file", str(path)], {}).auth_token == TOKEN.encode()
    assert parse_config([], {"WONDERQ_AUTH_TOKEN_FILE": str(path)}).auth_token == \
        TOKEN.encode()


def test_the_token_is_not_in_configs_repr():
    config = parse_config(["--auth-token", TOKEN], {})
    assert TOKEN not in repr(config) and TOKEN not in str(config)


def test_help_says_set_or_off_for_the_token_never_the_token(capsys):
    with_token = build_parser({"WONDERQ_AUTH_TOKEN": TOKEN}).format_help()
    assert TOKEN not in with_token
    assert "(env WONDERQ_AUTH_TOKEN; default set)" in " ".join(with_token.split())
    without = build_parser({}).format_help()
    assert "(env WONDERQ_AUTH_TOKEN; default off)" in " ".join(without.split())


def test_help_names_what_an_unset_metrics_host_means():
    # A newcomer's review: --help said "default off", README "--host", which is right.
    text = " ".join(build_parser({}).format_help().split())
    assert "(env WONDERQ_METRICS_HOST; default --host)" in text
    assert "(env WONDERQ_METRICS_PORT; default off)" in text
    text = " ".join(build_parser({"WONDERQ_METRICS_HOST": ""}).format_help().split())
    assert "(env WONDERQ_METRICS_HOST; default --host)" in text


def test_flag_and_file_together_are_refused(capsys, tmp_path):
    path = tmp_path / "token"
    path.write_text(TOKEN)
    for argv, environ in ((["--auth-token", TOKEN, "--auth-token-file", str(path)], {}),
                          (["--auth-token-file", str(path)], {"WONDERQ_AUTH_TOKEN": TOKEN})):
        err = refused(capsys, argv, environ)
        assert "not both" in err and TOKEN not in err


def test_unreadable_and_empty_token_files_are_refused(capsys, tmp_path):
    err = refused(capsys, ["--auth-token-file", str(tmp_path / "missing")])
    assert "cannot read --auth-token-file" in err and "No such file" in err
    empty = tmp_path / "empty"
    empty.write_text("\n")
    assert f"--auth-token-file {empty} is empty" in refused(
        capsys, ["--auth-token-file", str(empty)])


@pytest.mark.parametrize("token", ["", "two words", "tab\there"])
def test_bad_tokens_are_refused_without_being_repeated(capsys, token):
    err = refused(capsys, ["--auth-token", token])
    assert "--auth-token" in err
    if token:
        assert token not in err
    err = refused(capsys, [], {"WONDERQ_AUTH_TOKEN": token})
    assert "WONDERQ_AUTH_TOKEN:" in err
    if token:
        assert token not in err


def test_tls_files_become_paths():
    config = parse_config(["--tls-cert", "c.pem", "--tls-key", "k.pem", "--tls-ca", "ca.pem"],
                          {})
    assert (config.tls_cert, config.tls_key, config.tls_ca) == (
        Path("c.pem"), Path("k.pem"), Path("ca.pem"))


@pytest.mark.parametrize(("argv", "message"), [
    (["--tls-cert", "c.pem"], "--tls-cert and --tls-key go together"),
    (["--tls-key", "k.pem"], "--tls-cert and --tls-key go together"),
    (["--tls-ca", "ca.pem"], "--tls-ca (require client certificates) needs --tls-cert"),
])
def test_tls_flags_that_do_not_go_together_are_refused(capsys, argv, message):
    assert message in refused(capsys, argv)


@pytest.mark.parametrize(("argv", "environ", "data_dir", "ignored"), [
    (["--in-memory", "--data-dir", "/srv/q"], {}, None, "/srv/q"),
    (["--in-memory"], {"WONDERQ_DATA_DIR": "/srv/q"}, None, "/srv/q"),
    ([], {"WONDERQ_IN_MEMORY": "1", "WONDERQ_DATA_DIR": "/srv/q"}, None, "/srv/q"),
    (["--in-memory"], {}, None, None),  # the default directory: nothing to warn of
    (["--data-dir", "none"], {}, None, None),
    (["--data-dir", "/srv/q"], {}, Path("/srv/q"), None),  # used, not ignored
    # A flag beats the environment: a WONDERQ_IN_MEMORY left in a unit file made a
    # reviewer's `--data-dir /srv/q` keep nothing.
    (["--data-dir", "/srv/q"], {"WONDERQ_IN_MEMORY": "1"}, Path("/srv/q"), None),
    # ... even one naming the default directory (a reviewer's)
    (["--data-dir", "./wonderq-data"], {"WONDERQ_IN_MEMORY": "1"}, Path("./wonderq-data"),
     None),
])
def test_a_data_directory_overruled_by_in_memory_is_named(argv, environ, data_dir, ignored):
    # The server warns at start with it (server.recover), rather than silently keep nothing.
    config = parse_config(argv, environ)
    assert (config.data_dir, config.ignored_data_dir) == (data_dir, ignored)


@pytest.mark.parametrize(("argv", "environ", "reserve"), [
    ([], {}, 4 * 1024 * 1024),
    (["--journal-reserve", "0"], {}, 0),
    (["--journal-reserve", "512K"], {}, 512 * 1024),
    (["--journal-reserve", "16MiB"], {}, 16 * 1024 * 1024),
    (["--journal-reserve", "1000"], {}, 1000),
    ([], {"WONDERQ_JOURNAL_RESERVE": "8m"}, 8 * 1024 * 1024),
])
def test_journal_reserve_takes_bytes_or_a_size(argv, environ, reserve):
    assert parse_config(argv, environ).journal_reserve_bytes == reserve


@pytest.mark.parametrize(("value", "message"), [
    ("-1", "must be bytes, or a size such as 512K or 4M"),
    ("4T", "must be bytes, or a size such as 512K or 4M"),
    ("lots", "must be bytes, or a size such as 512K or 4M"),
    ("257M", "must be at most 256M"),
])
def test_a_bad_journal_reserve_is_refused(capsys, value, message):
    assert message in refused(capsys, ["--journal-reserve", value])


@pytest.mark.parametrize(("argv", "environ", "message"), [
    (["--data-dir", ""], {}, "--data-dir is empty"),
    ([], {"WONDERQ_DATA_DIR": "  "}, "--data-dir is empty"),
    (["--host", ""], {}, "--host is empty"),
    ([], {"WONDERQ_HOST": ""}, "--host is empty"),
    (["--max-frame-bytes", str(2**32)], {}, "the most a frame's 4-byte length can say"),
])
def test_settings_that_cannot_mean_what_was_meant_are_refused(capsys, argv, environ, message):
    # An unset variable in a service file silently ran in memory, or listened on every
    # interface (an operator's review); the others could never work.
    assert message in refused(capsys, argv, environ)


def test_an_empty_data_dir_with_in_memory_is_in_memory():
    assert parse_config(["--in-memory", "--data-dir", ""], {}).data_dir is None


def test_a_percentage_of_memory_is_of_the_usable_memory(monkeypatch):
    monkeypatch.setattr(config_module, "usable_memory_bytes", lambda: 1000 * MIB)
    assert parse_config([], {}).max_memory_bytes == 400 * MIB
    assert parse_config(["--max-memory", "10%"], {}).max_memory_bytes == 100 * MIB
    limits = parse_config([], {}).connection_limits
    assert limits.max_client_memory_bytes == 100 * MIB  # 10%: a quarter of --max-memory's
    assert parse_config(["--max-client-memory", "2G"], {}).connection_limits \
        .max_client_memory_bytes == 2048 * MIB
    assert parse_config([], {"WONDERQ_MAX_CLIENT_MEMORY": "50%"}).connection_limits \
        .max_client_memory_bytes == 500 * MIB


def test_a_bad_client_memory_limit_is_refused(capsys):
    assert "must be > 0" in refused(capsys, ["--max-client-memory", "0"])
    assert "a percentage must be over 0" in refused(capsys, ["--max-client-memory", "0%"])


def test_a_value_that_looks_like_a_flag_is_answered_with_the_way_to_write_it(capsys):
    # argparse takes "-5%" for the next flag; its own words named no way out.
    err = refused(capsys, ["--max-memory", "-5%"])
    assert "expected one argument" in err and "--flag=VALUE" in err
    assert "a percentage must be over 0" in refused(capsys, ["--max-memory=-5%"])


@pytest.mark.parametrize("flag", ["--max-queues", "--max-connections-per-address",
                                  "--max-memory", "--max-client-memory", "--max-frame-bytes"])
def test_no_limit_takes_more_than_64_bits(capsys, flag):
    # 10**23 started the server, and STATS then failed to encode the limit (a reviewer).
    assert "must be at most 9223372036854775807" in refused(capsys, [flag, str(10**23)])


@pytest.mark.parametrize("flag", ["--visibility-timeout", "--max-visibility-timeout"])
def test_no_lease_shorter_than_a_receive_may_ask_for_is_a_default_or_limit(capsys, flag):
    # A reviewer: --visibility-timeout 0.0005 was taken, so a receive naming no lease
    # had one over at once and each message was handed out again; a receive's own
    # visibility must be at least 0.001 s.
    assert "must be a number of seconds >= 0.001" in refused(capsys, [flag, "0.0005"])
    config = parse_config(["--visibility-timeout", "0.001", "--max-visibility-timeout",
                           "0.001"], {})
    assert (config.visibility_timeout_s, config.limits.max_visibility_s) == (0.001, 0.001)


@pytest.mark.parametrize("flag", ["--max-batch", "--max-headers"])
def test_item_limits_stop_at_what_msgpack_can_hold(capsys, flag):
    # Past it, every binary request over 64 KiB was refused as malformed msgpack.
    err = refused(capsys, [flag, str(2**32)])
    assert "must be at most 4294967295, the most items a msgpack array or map" in err
    config = parse_config([flag, str(2**32 - 1)], {})
    assert getattr(config.limits, flag[2:].replace("-", "_")) == 2**32 - 1


def test_a_bad_variable_is_refused_only_when_its_flag_is_not_given(capsys):
    # A flag beats the environment, a bad value in it too: a stray WONDERQ_PORT=abc
    # stopped `--port 0` (a newcomer's review).
    environ = {"WONDERQ_PORT": "abc", "WONDERQ_IN_MEMORY": "maybe"}
    config = parse_config(["--port", "0", "--in-memory"], environ)
    assert (config.port, config.data_dir) == (0, None)
    assert "WONDERQ_PORT='abc': must be a whole number" in refused(
        capsys, ["--in-memory"], environ)
    assert "WONDERQ_IN_MEMORY='maybe': must be true or false" in refused(
        capsys, ["--port", "0"], environ)
    # --help still works, and says which variable cannot be used (a value with a ":" in
    # it was cut there; a bad token variable read "set").
    shown = " ".join(build_parser({"WONDERQ_PORT": "1:2", "WONDERQ_AUTH_TOKEN": " "})
                     .format_help().split())
    assert "default none: WONDERQ_PORT cannot be used" in shown
    assert "default none: WONDERQ_AUTH_TOKEN cannot be used" in shown


def test_compact_min_bytes_takes_a_size_like_the_other_sizes(capsys):
    assert parse_config(["--compact-min-bytes", "64M"], {}).compact_min_bytes == 64 * MIB
    assert parse_config([], {"WONDERQ_COMPACT_MIN_BYTES": "1000"}).compact_min_bytes == 1000
    assert "must be bytes over 0" in refused(capsys, ["--compact-min-bytes", "0"])


def test_busy_poll_is_off_unless_asked_for(capsys):
    assert parse_config([], {}).busy_poll_us == 0
    assert parse_config(["--busy-poll", "300"], {}).busy_poll_us == 300
    assert parse_config([], {"WONDERQ_BUSY_POLL": "10000"}).busy_poll_us == 10_000


@pytest.mark.parametrize("value", ["-1", "10001", "0.5", "lots"])
def test_a_bad_busy_poll_is_refused(capsys, value):
    message = refused(capsys, ["--busy-poll", value])
    assert "--busy-poll" in message and "must be a whole number" in message


def test_the_metrics_endpoints_limits_are_flags_with_its_defaults(capsys):
    from wonderq_server import metrics_http

    config = parse_config([], {})
    # config.py does not import metrics_http (h11 is loaded only with --metrics-port), so it
    # repeats the defaults; they must agree.
    assert (config.metrics_max_connections, config.metrics_timeout_s,
            config.metrics_max_head_bytes) == (metrics_http.DEFAULT_MAX_CONNECTIONS,
                                               metrics_http.DEFAULT_TIMEOUT_S,
                                               metrics_http.DEFAULT_MAX_HEAD_BYTES)
    config = parse_config(["--metrics-max-connections", "5", "--metrics-timeout", "2.5",
                           "--metrics-max-head-bytes", "16K"], {})
    assert (config.metrics_max_connections, config.metrics_timeout_s,
            config.metrics_max_head_bytes) == (5, 2.5, 16 * 1024)
    assert parse_config([], {"WONDERQ_METRICS_MAX_CONNECTIONS": "7"}).metrics_max_connections \
        == 7
    for value in ("0", "65537", "-1", "many"):
        assert "--metrics-max-connections" in (err := refused(
            capsys, ["--metrics-max-connections", value]))
        assert "must be a whole number" in err
    assert "must be a number of seconds > 0" in refused(capsys, ["--metrics-timeout", "0"])
    assert "must be bytes over 0" in refused(capsys, ["--metrics-max-head-bytes", "0"])


@pytest.mark.parametrize("host", ["a..example", "a" * 64 + ".example"])
@pytest.mark.parametrize("flag", ["--host", "--metrics-host"])
def test_a_host_name_the_resolver_cannot_encode_is_a_usage_error(capsys, flag, host):
    # A typo (a double dot) or a label over 63 characters ended the start in a UnicodeError
    # traceback from the resolver, exit 1 (a reviewer).
    err = refused(capsys, [flag, host])
    assert f"{flag} {host!r} is not a host name or address: label empty or too long" in err


@pytest.mark.parametrize("flag", ["--compact-min-bytes", "--metrics-max-head-bytes"])
def test_no_size_flag_takes_more_than_64_bits(capsys, flag):
    assert "must be at most 9223372036854775807 bytes (64 bits)" in refused(
        capsys, [flag, str(10**23)])


def test_a_token_file_is_read_no_further_than_a_token(capsys):
    # /dev/zero, or a big file named by mistake, was read whole: a MemoryError traceback
    # under a memory limit, or for ever (a reviewer).
    err = refused(capsys, ["--auth-token-file", "/dev/zero"])
    assert "--auth-token-file /dev/zero is over 4096 bytes: not a token file" in err
