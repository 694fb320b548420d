"""S4 shapes in process: a batch's whole server-side path but the socket, per message.

    python bench/probes/batch_path.py

put_many: msgpack decode of a 100-body request, make_command, Broker.put_many and
the reply's encoding; receive + ack_many: make_command, Broker.receive(max=100),
encoding the deliveries, the ack_many request's decode and checks, Broker.ack_many
and its reply. No server, no clock, no I/O: quieter than the socket probes on a
shared machine, and blind to what the event loop and the kernel cost. Prints the
minimum of 7 runs of 100,000 messages each.
"""

from __future__ import annotations

import time

import msgpack

from wonderq_server.binary_codec import BinaryEncoder
from wonderq_server.broker import Broker
from wonderq_server.commands import Limits, make_command

BATCHES = 1000
NOW = 1.8e9
BODY = b"x" * 100


def decoded(args: dict) -> dict:
    return msgpack.unpackb(msgpack.packb(args, use_bin_type=True))


def one_run() -> tuple[float, float]:
    broker, encoder, limits = Broker(), BinaryEncoder(), Limits()
    started = time.perf_counter()
    for _ in range(BATCHES):
        command = make_command("put_many", decoded({"queue": "q", "bodies": [BODY] * 100}),
                               limits)
        encoder.result(command, broker.put_many("q", command.args["bodies"], NOW))
    put_done = time.perf_counter()
    for _ in range(BATCHES):
        command = make_command("receive", decoded({"queue": "q", "max": 100}), limits)
        messages = broker.receive("q", 100, None, NOW)
        encoder.result(command, messages)
        items = [[m.id, m.lease] for m in messages]
        command = make_command("ack_many", decoded({"queue": "q", "items": items}), limits)
        encoder.result(command, broker.ack_many("q", command.args["items"], NOW))
    consume_done = time.perf_counter()
    n = BATCHES * 100
    return 1e6 * (put_done - started) / n, 1e6 * (consume_done - put_done) / n


def main() -> None:
    runs = [one_run() for _ in range(7)]
    print(f"put_many {min(r[0] for r in runs):.2f} us/msg  "
          f"receive+ack_many {min(r[1] for r in runs):.2f} us/msg  (min of 7)")


if __name__ == "__main__":
    main()
