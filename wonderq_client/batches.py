"""Batch requests (put_many, ack_many, nack_many): their items out, their per-item results in.

Design decision: a batch is one request with one reply, and the reply holds
one result per item, in item order. A failed item does not fail the batch:
its place in the result list holds the WonderQError instance for its code
(returned, not raised), so the caller sees at once which items went ahead.
Only an error about the whole request (BATCH_TOO_LARGE, an empty batch, a bad
queue name, a lost connection) raises.

Rules:
* put_many items are bytes or str bodies, or dicts {"body", "delay",
  "priority", "headers", "expiry"}; an option that is None in a dict is left
  out, as in every request (nil means absent on the wire). Anything else in
  a dict is the server's to judge, as that item's BAD_ARGUMENT.
* An empty batch is [] at once, with no round trip (the server refuses one).
* ack_many and nack_many items are (id, lease) pairs or received Messages;
  a peeked Message (no lease) raises NotLeasedError before anything is sent.
* A batch is any iterable of items but one item, a str, bytes or a dict (a
  dict {id: lease} would go as its keys): those, and what is not iterable,
  raise TypeError naming the command, before anything is sent.
* The helpers reuse the lists they are given where they can: a batch of
  plain bodies or pairs is sent without copying its items.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .errors import error_from_wire
from .message import Message

PutItem = bytes | str | dict[str, Any]
# One value where a batch belongs: iterated, a str or bytes goes a character (or byte) an
# item, and a dict ({id: lease}) its keys an item.
ONE_VALUE = str | bytes | bytearray | memoryview | dict
SettleItem = tuple[int, int] | list[int] | Message


def put_items(bodies: Iterable[PutItem]) -> list[PutItem]:
    """put_items is put_many's `bodies` field: bodies as given, dicts without None options.
    One body where the list of them belongs (a str would be put a character a message)
    raises TypeError."""
    if isinstance(bodies, ONE_VALUE):
        raise TypeError(f"put_many takes a list of bodies, not one {type(bodies).__name__} "
                        f"(use put for one message)")
    items = bodies if isinstance(bodies, list) else _as_list(bodies, "put_many", "bodies")
    for index, item in enumerate(items):
        if isinstance(item, dict) and None in item.values():
            if items is bodies:
                items = list(items)  # never change the caller's list
            items[index] = {key: value for key, value in item.items() if value is not None}
    return items


def settle_items(items: Iterable[SettleItem], command: str) -> list[Any]:
    """settle_items is ack_many's or nack_many's `items` field: one [id, lease] per item.
    One item where the list of them belongs raises TypeError: `(id, lease)` was sent as
    two items, each refused, and code that did not read the results took it for acked
    (a reviewer); put_many refuses one body the same way."""
    if isinstance(items, Message) or (isinstance(items, tuple | list) and items
                                      and type(items[0]) is int):
        one = "Message" if isinstance(items, Message) else "(id, lease) pair"
        raise TypeError(f"{command} takes a list of messages or (id, lease) pairs, not one "
                        f"{one} (use {command.removesuffix('_many')} for one message)")
    if isinstance(items, ONE_VALUE):
        raise TypeError(f"{command} takes a list of messages or (id, lease) pairs, not a "
                        f"{type(items).__name__}")
    if not isinstance(items, list):
        items = _as_list(items, command, "messages or (id, lease) pairs")
    # A received Message's pair is read inline (this runs for every item of a batch);
    # settle_item raises NotLeasedError for a peeked one.
    return [(item.id, item.lease) if type(item) is Message and item.lease is not None
            else item.settle_item() if isinstance(item, Message) else item for item in items]


def _as_list(items: Any, command: str, field: str) -> list[Any]:
    """_as_list is an iterable's items as a list; TypeError naming the command for one
    that is not iterable (None, a number)."""
    try:
        iterator = iter(items)
    except TypeError:
        raise TypeError(f"{command} takes a list of {field}, not "
                        f"{type(items).__name__}") from None
    return list(iterator)


def item_results(results: list[Any]) -> list[Any]:
    """item_results turns each failed item's [code, message] into its error, in place."""
    if list not in map(type, results):  # no item failed (checked in C: this is per item)
        return results
    for index, result in enumerate(results):
        if type(result) is list:  # as above: msgpack makes plain lists
            results[index] = error_from_wire(result[0], result[1])
    return results

