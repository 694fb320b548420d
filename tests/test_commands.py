"""Tests of commands.py: the one place where a request's fields are checked."""

from __future__ import annotations

import math

import pytest

from wonderq_server.commands import (
    COMMANDS,
    TEXT_CONVERTERS,
    Command,
    Limits,
    Rejected,
    make_command,
)
from wonderq_server.errors import (
    BAD_ARGUMENT,
    BATCH_TOO_LARGE,
    INVALID_QUEUE_NAME,
    UNKNOWN_COMMAND,
    CommandError,
)

LIMITS = Limits()
SMALL = Limits(max_batch=3, max_wait_s=10.0, max_visibility_s=20.0, max_delay_s=30.0)

# A complete, valid argument map for every command.
VALID = {
    "put": {"queue": "q", "body": b"x"},
    "put_many": {"queue": "q", "bodies": [b"a", b"b"]},
    "receive": {"queue": "q"},
    "ack": {"queue": "q", "id": 1, "lease": 2},
    "nack": {"queue": "q", "id": 1, "lease": 2},
    "touch": {"queue": "q", "id": 1, "lease": 2},
    "stats": {},
    "ping": {},
    "quit": {},
}


def refused(name, args, limits=LIMITS) -> CommandError:
    with pytest.raises(CommandError) as info:
        make_command(name, args, limits)
    return info.value


def with_field(name: str, **fields) -> dict:
    return {**VALID[name], **fields}


# ------------------------------------------------------------ the table itself

def test_every_command_has_a_valid_example():
    assert set(VALID) == set(COMMANDS)


def test_required_fields_per_command():
    assert {name: spec[0] for name, spec in COMMANDS.items()} == {
        "put": ("queue", "body"),
        "put_many": ("queue", "bodies"),
        "receive": ("queue",),
        "ack": ("queue", "id", "lease"),
        "nack": ("queue", "id", "lease"),
        "touch": ("queue", "id", "lease"),
        "stats": (),
        "ping": (),
        "quit": (),
    }


# ------------------------------------------------------- valid requests, defaults

@pytest.mark.parametrize(("name", "args", "expected"), [
    ("put", {"queue": "q", "body": b"hello"}, {"queue": "q", "body": b"hello"}),
    ("put_many", {"queue": "q", "bodies": [b"a", b""]}, {"queue": "q", "bodies": [b"a", b""]}),
    ("receive", {"queue": "q"}, {"queue": "q", "max": 1, "wait": 0.0, "visibility": None}),
    ("ack", {"queue": "q", "id": 5, "lease": 7}, {"queue": "q", "id": 5, "lease": 7}),
    ("nack", {"queue": "q", "id": 5, "lease": 7},
     {"queue": "q", "id": 5, "lease": 7, "delay": 0.0}),
    ("touch", {"queue": "q", "id": 5, "lease": 7},
     {"queue": "q", "id": 5, "lease": 7, "visibility": None}),
    ("stats", {}, {}),
    ("ping", {}, {}),
    ("quit", {}, {}),
])
def test_defaults_are_filled_in(name, args, expected):
    command = make_command(name, args, LIMITS)
    assert isinstance(command, Command)
    assert command.name == name
    assert command.args == expected
    assert command.request_id is None


def test_optional_fields_given():
    command = make_command("receive", {"queue": "jobs", "max": 10, "wait": 2, "visibility": 7.5},
                           LIMITS, request_id=42)
    assert command.args == {"queue": "jobs", "max": 10, "wait": 2.0, "visibility": 7.5}
    assert type(command.args["wait"]) is float
    assert command.request_id == 42
    nack = make_command("nack", with_field("nack", delay=3), LIMITS)
    assert nack.args["delay"] == 3.0
    assert type(nack.args["delay"]) is float
    touch = make_command("touch", with_field("touch", visibility=0), LIMITS)
    assert touch.args["visibility"] == 0.0


def test_an_explicit_nil_means_the_default():
    command = make_command("receive", {"queue": "q", "max": None, "wait": None,
                                       "visibility": None}, LIMITS)
    assert command.args == {"queue": "q", "max": 1, "wait": 0.0, "visibility": None}


def test_request_id_is_carried_as_given():
    for request_id in (0, "abc", [1, 2], None, b"\x00"):
        assert make_command("ping", {}, LIMITS, request_id).request_id == request_id


@pytest.mark.parametrize("body", [b"raw", bytearray(b"raw"), memoryview(b"raw"), "raw"])
def test_body_accepts_bytes_like_and_str(body):
    command = make_command("put", {"queue": "q", "body": body}, LIMITS)
    assert command.args["body"] == b"raw"
    assert type(command.args["body"]) is bytes


def test_str_body_is_utf8_encoded():
    command = make_command("put", {"queue": "q", "body": "né"}, LIMITS)
    assert command.args["body"] == "né".encode()


def test_bodies_may_be_a_tuple_and_mixed_bytes_like():
    command = make_command("put_many", {"queue": "q", "bodies": (b"a", "b", bytearray(b"c"))},
                           LIMITS)
    assert command.args["bodies"] == [b"a", b"b", b"c"]


def test_zero_is_a_valid_id_lease_and_duration():
    command = make_command("nack", {"queue": "q", "id": 0, "lease": 0, "delay": 0}, LIMITS)
    assert command.args == {"queue": "q", "id": 0, "lease": 0, "delay": 0.0}


def test_limits_are_inclusive():
    assert make_command("receive", {"queue": "q", "max": 3, "wait": 10.0, "visibility": 20},
                        SMALL, None).args == {"queue": "q", "max": 3, "wait": 10.0,
                                              "visibility": 20.0}
    assert make_command("nack", with_field("nack", delay=30), SMALL).args["delay"] == 30.0
    assert make_command("put_many", {"queue": "q", "bodies": [b"1", b"2", b"3"]},
                        SMALL).args["bodies"] == [b"1", b"2", b"3"]


def test_big_ids_pass():
    big = 2**64 - 1
    assert make_command("ack", {"queue": "q", "id": big, "lease": big}, LIMITS).args["id"] == big


# -------------------------------------------------------------- unknown command

@pytest.mark.parametrize("name", ["bogus", "PUT", "Ping", "", None, 5, b"put", ["put"],
                                  "put_many ", "get"])
def test_unknown_command(name):
    error = refused(name, {})
    assert error.code == UNKNOWN_COMMAND
    assert "known: put, put_many, receive, ack, nack, touch, stats, ping, quit" in error.message


def test_unknown_command_is_reported_before_bad_arguments():
    assert refused("bogus", "not a map").code == UNKNOWN_COMMAND


def test_unknown_command_name_is_cut_short_in_the_message():
    error = refused("x" * 1000, {})
    assert error.message.startswith("unknown command '" + "x" * 39 + ";")


# ------------------------------------------------------------------ BAD_ARGUMENT

@pytest.mark.parametrize("args", [None, [], ["q"], "queue=q", 5])
def test_arguments_must_be_a_map(args):
    error = refused("ping", args)
    assert error.code == BAD_ARGUMENT
    assert error.message == f"arguments must be a map, got {type(args).__name__}"


@pytest.mark.parametrize(("name", "field"), [
    (name, field) for name, (required, _) in COMMANDS.items() for field in required
])
def test_missing_required_field(name, field):
    args = dict(VALID[name])
    del args[field]
    error = refused(name, args)
    assert error.code == BAD_ARGUMENT
    assert error.message == f"{name} needs the field {field!r}"


@pytest.mark.parametrize("name", list(COMMANDS))
def test_unknown_extra_field(name):
    error = refused(name, with_field(name, colour="red"))
    assert error.code == BAD_ARGUMENT
    assert error.message == f"{name} has no field colour"


@pytest.mark.parametrize(("name", "misspelt"), [
    ("receive", "maxx"),
    ("receive", "timeout"),
    ("nack", "dealy"),
    ("touch", "visibilty"),
])
def test_misspelt_optional_field_is_refused_even_when_optionals_are_left_out(name, misspelt):
    # Regression: the check once compared counts, so a misspelt option passed
    # whenever some other optional field was left out.
    error = refused(name, with_field(name, **{misspelt: 1}))
    assert error.code == BAD_ARGUMENT
    assert error.message == f"{name} has no field {misspelt}"


def test_several_extra_fields_are_all_named_sorted():
    error = refused("receive", {"queue": "q", "zeta": 1, "alpha": 2, 3: 4})
    assert error.code == BAD_ARGUMENT
    assert error.message == "receive has no field 3, alpha, zeta"


@pytest.mark.parametrize(("name", "field"), [
    ("ack", "id"), ("ack", "lease"), ("nack", "id"), ("nack", "lease"),
    ("touch", "id"), ("touch", "lease"), ("receive", "max"),
])
@pytest.mark.parametrize("value", [True, False, 1.0, "1", b"1", [1]])
def test_integer_fields_refuse_other_types(name, field, value):
    error = refused(name, with_field(name, **{field: value}))
    assert error.code == BAD_ARGUMENT
    assert error.message == f"{field} must be an integer, got {type(value).__name__}"


@pytest.mark.parametrize(("name", "field"), [
    ("ack", "id"), ("ack", "lease"), ("nack", "id"), ("nack", "lease"),
    ("touch", "id"), ("touch", "lease"), ("receive", "max"),
])
def test_integer_fields_refuse_negatives(name, field):
    error = refused(name, with_field(name, **{field: -1}))
    assert error.code == BAD_ARGUMENT
    assert error.message == f"{field} must not be negative, got -1"


@pytest.mark.parametrize("field", ["id", "lease"])
def test_required_integer_fields_refuse_nil(field):
    # PROTOCOL.md: a nil field counts as absent, so a required one is missing.
    error = refused("ack", with_field("ack", **{field: None}))
    assert error.code == BAD_ARGUMENT
    assert error.message == f"ack needs the field {field!r}"


def test_max_must_be_at_least_one():
    error = refused("receive", {"queue": "q", "max": 0})
    assert error.code == BAD_ARGUMENT
    assert error.message == "max must be at least 1, got 0"


SECONDS_FIELDS = [("receive", "wait"), ("receive", "visibility"), ("nack", "delay"),
                  ("touch", "visibility")]


@pytest.mark.parametrize(("name", "field"), SECONDS_FIELDS)
@pytest.mark.parametrize("value", [True, False, "5", b"5", [5]])
def test_seconds_refuse_other_types(name, field, value):
    error = refused(name, with_field(name, **{field: value}))
    assert error.code == BAD_ARGUMENT
    assert error.message == f"{field} must be a number of seconds, got {type(value).__name__}"


@pytest.mark.parametrize(("name", "field"), SECONDS_FIELDS)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, -1, -0.001])
def test_seconds_must_be_finite_and_not_negative(name, field, value):
    error = refused(name, with_field(name, **{field: value}))
    assert error.code == BAD_ARGUMENT
    assert error.message == (f"{field} must be a finite number of seconds >= 0, got {value}")


@pytest.mark.parametrize(("name", "field", "flag", "upper"), [
    ("receive", "wait", "--max-wait", 10),
    ("receive", "visibility", "--max-visibility-timeout", 20),
    ("nack", "delay", "--max-delay", 30),
    ("touch", "visibility", "--max-visibility-timeout", 20),
])
def test_seconds_over_their_limit(name, field, flag, upper):
    error = refused(name, with_field(name, **{field: upper + 0.5}), SMALL)
    assert error.code == BAD_ARGUMENT
    assert error.message == f"{field} is {upper + 0.5} s, over the limit of {upper} s ({flag})"


def test_default_second_limits():
    assert refused("receive", {"queue": "q", "wait": 300.001}).code == BAD_ARGUMENT
    assert make_command("receive", {"queue": "q", "wait": 300}, LIMITS).args["wait"] == 300.0
    assert refused("touch", with_field("touch", visibility=43200.5)).code == BAD_ARGUMENT
    assert refused("nack", with_field("nack", delay=43201)).code == BAD_ARGUMENT


@pytest.mark.parametrize("value", [5, {"a": b"b"}, 1.5, [b"x"]])
def test_body_must_be_bytes(value):
    error = refused("put", {"queue": "q", "body": value})
    assert error.code == BAD_ARGUMENT
    assert error.message == f"body must be bytes, got {type(value).__name__}"


@pytest.mark.parametrize("value", [b"ab", "ab", 3, {"a": 1}])
def test_bodies_must_be_a_list(value):
    error = refused("put_many", {"queue": "q", "bodies": value})
    assert error.code == BAD_ARGUMENT
    assert error.message == f"bodies must be a list of bytes, got {type(value).__name__}"


def test_bodies_must_not_be_empty():
    error = refused("put_many", {"queue": "q", "bodies": []})
    assert error.code == BAD_ARGUMENT
    assert error.message == "bodies must not be empty"


def test_each_body_in_a_batch_is_checked_and_named():
    error = refused("put_many", {"queue": "q", "bodies": [b"ok", b"ok", 7]})
    assert error.code == BAD_ARGUMENT
    assert error.message == "bodies[2] must be bytes, got int"


# ---------------------------------------------------------------- BATCH_TOO_LARGE

def test_max_over_the_batch_limit():
    error = refused("receive", {"queue": "q", "max": 4}, SMALL)
    assert error.code == BATCH_TOO_LARGE
    assert error.message == "max is 4, over the limit of 3 (--max-batch)"
    assert refused("receive", {"queue": "q", "max": 1001}).code == BATCH_TOO_LARGE
    assert make_command("receive", {"queue": "q", "max": 1000}, LIMITS).args["max"] == 1000


def test_bodies_over_the_batch_limit():
    error = refused("put_many", {"queue": "q", "bodies": [b"x"] * 4}, SMALL)
    assert error.code == BATCH_TOO_LARGE
    assert error.message == "bodies has 4 items, over the limit of 3 (--max-batch)"


def test_batch_length_is_checked_before_the_items():
    # A huge batch is refused by its length, before any item is looked at.
    error = refused("put_many", {"queue": "q", "bodies": [None] * 4}, SMALL)
    assert error.code == BATCH_TOO_LARGE


# ------------------------------------------------------------- INVALID_QUEUE_NAME

@pytest.mark.parametrize("queue", [
    "", " ", "a b", "q/1", "q:1", "q\n", "\nq", "é", "q\x00", "x" * 129, "\uff51", "\u0661", "*",
    5, b"q", ["q"],
])
@pytest.mark.parametrize("name", ["put", "put_many", "receive", "ack", "nack", "touch"])
def test_invalid_queue_names(name, queue):
    error = refused(name, with_field(name, queue=queue))
    assert error.code == INVALID_QUEUE_NAME
    assert error.message.startswith("queue names are 1-128 characters of A-Z a-z 0-9 _ - .")


@pytest.mark.parametrize("queue", ["q", "A-z_0.9", "x" * 128, "-", ".", "_", "0"])
def test_valid_queue_names(queue):
    assert make_command("put", {"queue": queue, "body": b""}, LIMITS).args["queue"] == queue


def test_queue_is_checked_before_later_fields():
    error = refused("ack", {"queue": "bad name", "id": -1, "lease": "x"})
    assert error.code == INVALID_QUEUE_NAME


# -------------------------------------------------------------------- text mode

def test_text_converters():
    assert TEXT_CONVERTERS["id"]("id", "12") == 12
    assert TEXT_CONVERTERS["max"]("max", "-3") == -3  # the range is checked later
    assert TEXT_CONVERTERS["wait"]("wait", "1.5") == 1.5
    assert math.isnan(TEXT_CONVERTERS["delay"]("delay", "nan"))
    assert set(TEXT_CONVERTERS) == {"id", "lease", "max", "wait", "visibility", "delay"}


@pytest.mark.parametrize(("field", "text", "message"), [
    ("id", "x", "id must be an integer, got 'x'"),
    ("lease", "1.5", "lease must be an integer, got '1.5'"),
    ("max", "", "max must be an integer, got ''"),
    ("wait", "soon", "wait must be a number of seconds, got 'soon'"),
    ("id", "+5", "id must be an integer, got '+5'"),
    ("id", "1_0", "id must be an integer, got '1_0'"),
    ("lease", "\u0661", "lease must be an integer, got '\u0661'"),
    ("visibility", "", "visibility must be a number of seconds, got ''"),
])
def test_text_converters_refuse(field, text, message):
    with pytest.raises(CommandError) as info:
        TEXT_CONVERTERS[field](field, text)
    assert info.value.code == BAD_ARGUMENT
    assert info.value.message == message


def test_reprs():
    assert repr(Command("ping", {}, 3)) == "Command('ping', {}, request_id=3)"
    error = CommandError(BAD_ARGUMENT, "no")
    assert repr(Rejected(error, 9)) == f"Rejected({error!r}, request_id=9)"


def test_limits_line_bytes():
    assert Limits(max_message_bytes=10).max_line_bytes == 1034
    assert LIMITS.max_line_bytes == 256 * 1024 + 1024


@pytest.mark.parametrize(("name", "field"), [("put", "queue"), ("put", "body"),
                                             ("put_many", "bodies"), ("receive", "queue"),
                                             ("nack", "lease"), ("touch", "id")])
def test_a_nil_required_field_is_missing(name, field):
    error = refused(name, with_field(name, **{field: None}))
    assert error.code == BAD_ARGUMENT
    assert error.message == f"{name} needs the field {field!r}"
