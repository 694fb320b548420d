"""PROTOCOL.md's test vectors, checked against the server's codec and the client's.

The vectors live in the document (a ```wonderq-vectors block) so that the
document, the server and the client cannot drift apart.
"""

from __future__ import annotations

import ast
import pathlib
import re

import pytest

from wonderq_client.codec import ReplyDecoder
from wonderq_client.codec import encode_request as client_encode_request
from wonderq_server.binary_codec import PREAMBLE, BinaryDecoder, BinaryEncoder
from wonderq_server.binary_codec import encode_request as server_encode_request
from wonderq_server.commands import Command, Limits, make_command
from wonderq_server.errors import CommandError

PROTOCOL = pathlib.Path(__file__).resolve().parent.parent / "PROTOCOL.md"


def load_vectors() -> list[tuple[str, list, bytes]]:
    text = PROTOCOL.read_text()
    block = re.search(r"```wonderq-vectors\n(.*?)```", text, re.S)
    assert block, "PROTOCOL.md has no wonderq-vectors block"
    lines = block.group(1).strip().splitlines()
    vectors = []
    for head, hexline in zip(lines[::2], lines[1::2], strict=True):
        kind, _, literal = head.partition(" ")
        vectors.append((kind, ast.literal_eval(literal), bytes.fromhex(hexline)))
    return vectors


VECTORS = load_vectors()
REQUESTS = [(v, b) for k, v, b in VECTORS if k == "request"]
REPLIES = [(v, b) for k, v, b in VECTORS if k == "reply"]


def test_document_has_both_kinds():
    assert len(REQUESTS) >= 4 and len(REPLIES) >= 4


@pytest.mark.parametrize(("value", "wire"), REQUESTS)
def test_request_vector(value, wire):
    request_id, name, args = value
    assert client_encode_request(request_id, name, args) == wire
    assert server_encode_request(request_id, name, args) == wire
    [command] = BinaryDecoder(Limits()).feed(PREAMBLE + wire)
    assert isinstance(command, Command)
    assert (command.request_id, command.name) == (request_id, name)
    for field, expected in args.items():
        if field == "bodies":  # checked items are bare bodies or maps: compare bodies, options
            checked = command.args["bodies"]
            assert [item if isinstance(item, bytes) else item["body"] for item in checked] == [
                b if isinstance(b, bytes) else b["body"] for b in expected]
            for item, given in zip(checked, expected, strict=True):
                if isinstance(given, dict):
                    assert {k: item[k] for k in given} == given
        elif field == "items":
            assert command.args[field] == [tuple(pair) for pair in expected]
        else:
            assert command.args[field] == expected


class Delivered:
    def __init__(self, row):
        (self.id, self.body, self.lease, self.deliveries, self.enqueued_at, self.priority,
         self.headers, dead_letter) = row
        self.origin = tuple(dead_letter) if dead_letter else None


@pytest.mark.parametrize(("value", "wire"), REPLIES)
def test_reply_vector(value, wire):
    assert ReplyDecoder().feed(wire) == [value]
    request_id, error, result = value
    encoder = BinaryEncoder()
    if error is not None:
        assert encoder.error(request_id, CommandError(*error)) == wire
        return
    # Encode the result as the server would for the request this reply answers.
    [(name, args)] = [(n, a) for (rid, n, a), _ in REQUESTS if rid == request_id]
    if name == "receive":
        result = [Delivered(row) for row in result]
    command = make_command(name, dict(args), Limits(), request_id)
    assert encoder.result(command, result) == wire


def _server_codes() -> set[str]:
    from wonderq_server import errors

    return {value for name, value in vars(errors).items()
            if name.isupper() and isinstance(value, str)}


def test_every_error_code_is_in_protocols_table_and_the_table_has_no_other():
    table = set(re.findall(r"^\| `([A-Z_]+)` \| (?:command|protocol) \|",
                           PROTOCOL.read_text(), re.M))
    assert table == _server_codes()


def test_the_client_raises_its_own_class_for_every_code_a_binary_request_is_answered_with():
    # Codes sent unasked (request id nil) before a close reach a caller as
    # ConnectionClosed.server_code; LINE_TOO_LONG and HTTP_REQUEST are text mode's alone.
    from wonderq_client.errors import ERRORS_BY_CODE

    unasked = {"TOO_MANY_CONNECTIONS", "IDLE_TIMEOUT", "AUTH_TIMEOUT", "SHUTTING_DOWN",
               "LINE_TOO_LONG", "HTTP_REQUEST"}
    assert _server_codes() - unasked <= ERRORS_BY_CODE.keys()
    for code in _server_codes() - unasked:
        assert ERRORS_BY_CODE[code].code == code
