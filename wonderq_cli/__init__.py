"""wonderq_cli: the `wonderq` command line tool, built on the client library.

    wonderq stats [--json]          the server's state, as tables or JSON
    wonderq top                     a live view, refreshed every second
    wonderq put QUEUE [BODY | -]    and receive, ack, peek, purge, queues
    wonderq demo                    watch producers and consumers at work

It depends on the client (never on the server's modules) and on rich for
terminal output.
"""
