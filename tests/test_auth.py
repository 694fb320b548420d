"""Tests of auth.py: loading the token, checking it, the bearer header, loopback addresses."""

from __future__ import annotations

import pytest

from wonderq_server.auth import (
    AUTH_FAILURE_DELAY_S,
    MAX_TOKEN_BYTES,
    AuthFailed,
    TokenCheck,
    is_loopback,
    load_token,
)
from wonderq_server.errors import AUTH_FAILED, BAD_ARGUMENT, CommandError

TOKEN = "s3cret-token"


# ------------------------------------------------------------------ loading

def test_no_token_anywhere_is_none():
    assert load_token(None, None) is None


def test_token_from_the_flag_is_bytes():
    assert load_token(TOKEN, None) == TOKEN.encode()


@pytest.mark.parametrize(("content", "token"), [
    (b"s3cret-token\n", b"s3cret-token"),
    (b"s3cret-token\r\n", b"s3cret-token"),
    (b"s3cret-token", b"s3cret-token"),
    ("caf\u00e9-\u4e2d\n".encode(), "caf\u00e9-\u4e2d".encode()),
])
def test_token_file_loses_one_trailing_newline(tmp_path, content, token):
    path = tmp_path / "token"
    path.write_bytes(content)
    assert load_token(None, str(path)) == token


@pytest.mark.parametrize(("content", "message"), [
    (b"", "is empty"),
    (b"\n", "is empty"),
    (b"two words\n", "whitespace or a control character"),
    (b"hidden\n\n", "whitespace or a control character"),
    (b"tab\there", "whitespace or a control character"),
    (b"\xff\xfe", "is not UTF-8 text"),
    (b"t" * (MAX_TOKEN_BYTES + 1), f"is {MAX_TOKEN_BYTES + 1} bytes long, over the limit of "
     f"{MAX_TOKEN_BYTES}"),
])
def test_bad_token_files_are_refused_without_showing_the_token(tmp_path, content, message):
    path = tmp_path / "f"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as info:
        load_token(None, str(path))
    assert str(path) in str(info.value)
    for word in (b"two", b"words", b"hidden", b"tab", b"here"):
        assert word not in content or word.decode() not in str(info.value)


def test_an_unreadable_token_file_says_why(tmp_path):
    with pytest.raises(ValueError, match=r"cannot read --auth-token-file .*: No such file"):
        load_token(None, str(tmp_path / "missing"))
    with pytest.raises(ValueError, match=r"cannot read --auth-token-file .*: Is a directory"):
        load_token(None, str(tmp_path))


def test_both_the_flag_and_the_file_is_an_error(tmp_path):
    path = tmp_path / "token"
    path.write_text(TOKEN)
    with pytest.raises(ValueError, match="not both"):
        load_token(TOKEN, str(path))


@pytest.mark.parametrize("token", ["", "a b", "a\tb", "a\x00b", "line\n"])
def test_bad_token_flags_are_refused(token):
    with pytest.raises(ValueError, match="--auth-token"):
        load_token(token, None)


# ----------------------------------------------------------------- checking

def test_the_right_token_passes_and_counts_nothing():
    check = TokenCheck(TOKEN.encode())
    assert check.required
    check.check(TOKEN.encode())
    assert check.failures == 0


@pytest.mark.parametrize("given", [b"", b"s3cret-toke", b"s3cret-token!", b"S3CRET-TOKEN",
                                   b"x" * 10_000])
def test_a_wrong_token_is_auth_failed_with_the_delay_and_is_counted(given):
    check = TokenCheck(TOKEN.encode())
    with pytest.raises(AuthFailed) as info:
        check.check(given)
    error = info.value
    assert error.code == AUTH_FAILED and error.closes_connection
    assert error.close_delay_s == AUTH_FAILURE_DELAY_S == 1.0
    assert TOKEN not in error.message
    assert check.failures == 1


def test_auth_without_a_configured_token_is_a_command_error():
    check = TokenCheck(None)
    assert not check.required
    with pytest.raises(CommandError) as info:
        check.check(b"anything")
    assert type(info.value) is CommandError and info.value.code == BAD_ARGUMENT
    assert "this server has no auth token" in info.value.message
    assert check.failures == 0


@pytest.mark.parametrize(("header", "ok"), [
    (f"Bearer {TOKEN}", True),
    (f"bearer {TOKEN}", True),
    (f"  Bearer   {TOKEN}  ", True),
    (f"Bearer {TOKEN}x", False),
    (f"Basic {TOKEN}", False),
    (TOKEN, False),
    ("Bearer", False),
    ("", False),
])
def test_bearer_header(header, ok):
    assert TokenCheck(TOKEN.encode()).bearer_ok(header) is ok


def test_bearer_without_a_configured_token_lets_anything_in():
    assert TokenCheck(None).bearer_ok("")


# ----------------------------------------------------------------- loopback

@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost",
                                  "LOCALHOST", " 127.0.0.1 "])
def test_loopback_addresses(host):
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "", "::", "10.0.0.5", "192.168.1.1",
                                  "example.com", "localhost.example.com", "128.0.0.1"])
def test_addresses_others_may_reach(host):
    assert not is_loopback(host)


def test_a_wrong_bearer_token_is_counted_and_a_missing_one_is_not():
    check = TokenCheck(TOKEN.encode())
    assert not check.bearer_ok("")
    assert check.failures == 0
    assert not check.bearer_ok("Bearer nope")
    assert check.bearer_ok(f"Bearer {TOKEN}")
    assert check.failures == 1
