"""The client's Python per message in an S4c batch, piece by piece, in process: µs per message.

    python bench/probes/client_batch_pieces.py

S4c's load generator receives 100 messages and acks them in one ack_many.
This times, with `timeit` (the minimum of 5 repeats), each step
wonderq_client takes for such a batch on its own: decoding the receive's
reply frame, making the Message objects, the ack_many's items, encoding the
ack_many, decoding its reply and reading its results. No socket, no event
loop, no server: what the library's own Python costs, beside what
bench/probes/s4c_cpu_split.py measures of the whole client process.
"""

from __future__ import annotations

import timeit

import msgpack

from wonderq_client.batches import item_results, settle_items
from wonderq_client.codec import ReplyDecoder, encode_request
from wonderq_client.message import from_deliveries

BATCH = 100
NUMBER = 20_000
FIRST_ID = 1_800_000_000_000 << 22  # an id as ids.py makes them (milliseconds << 22)


def frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


def per_message(step) -> float:
    return min(timeit.repeat(step, number=NUMBER, repeat=5)) / NUMBER / BATCH * 1e6


def main() -> None:
    rows = [[FIRST_ID + i, b"x" * 100, FIRST_ID + 5_000 + i, 1, 1.8e9, 0, None, None]
            for i in range(BATCH)]
    reply = frame(msgpack.packb([7, None, rows], use_bin_type=True))
    ack_reply = frame(msgpack.packb([8, None, [None] * BATCH]))
    decoder = ReplyDecoder()
    messages = from_deliveries(None, "q", rows)  # type: ignore[arg-type]
    items = settle_items(messages, "ack_many")
    results = [None] * BATCH
    steps = {
        "decode the receive's reply": lambda: decoder.feed(reply),
        "make the Message objects": lambda: from_deliveries(None, "q", rows),  # type: ignore[arg-type]
        "ack_many's items": lambda: settle_items(messages, "ack_many"),
        "encode the ack_many": lambda: encode_request(8, "ack_many",
                                                      {"queue": "q", "items": items}),
        "decode the ack_many's reply": lambda: decoder.feed(ack_reply),
        "read its results": lambda: item_results(results),
    }
    for name, step in steps.items():
        print(f"{name:28s} {per_message(step):.3f} us per message")


if __name__ == "__main__":
    main()
