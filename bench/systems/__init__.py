"""The systems compared, one adapter module each, all with the same interface.

Design decision: the load generator (scenarios.py) knows nothing about any
system; it drives a module with this interface, so every system gets the
identical load and only the adapter differs:

    NAME                      name on the command line and in the tables
    missing() -> str | None   why it cannot run here (server or client absent)
    versions() -> dict        component -> version, for RESULTS.md
    server_argv(port, data_dir, mode) -> list[str]
                              mode "memory" (S1-S5), "fsync" (S6: every
                              answered write on disk), "restart" (S7: the
                              system's usual durable log)
    async probe(port)         returns once the server answers requests
    async prepare(port, queue, mode)   create what the queue needs (a stream,
                              a group, a consumer) before any load
    async count(port, queue) -> int    messages stored and not acked
    async connect(port, queue, consumer) -> Connection, a new connection
                              whose methods are:
        put(body); put_batch(bodies)        each returns once stored
        receive_one(wait_s) -> (handle, body) | None
        receive_batch(n, wait_s) -> [(handle, body), ...]  (up to n)
        ack(handle); ack_batch(handles)     each returns once answered
                                            (see bench/README.md for the
                                            one exception: JetStream batches)
        close()

Rules:
* Importing this package imports no client library; `load(name)` imports
  one adapter, and a missing library is reported by `missing()`, not raised.
* Every call into an adapter is bounded: the measured phases by the run's time
  limit (`wait_s` inside), and prepare, connect and count by runner.bounded.
"""

from __future__ import annotations

import importlib
from types import ModuleType

MODULES = {
    "wonderq": "systems.wonderq",
    "beanstalkd": "systems.beanstalkd",
    "redis": "systems.redis_streams",
    "nats": "systems.jetstream",
}


def load(name: str) -> ModuleType:
    """load imports the adapter for `name` (a key of MODULES)."""
    return importlib.import_module(MODULES[name])
