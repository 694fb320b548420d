"""`wonderq stats [--json]`: the server's state once, as tables or as JSON.

Design decision: the JSON is exactly the `stats` reply (PROTOCOL.md), so
scripts read the documented names; the tables are stats_view.py's, the same
that `wonderq top` shows live.
"""

from __future__ import annotations

import argparse
import json

from rich.console import Console

from .connection_options import open_client
from .output import print_rich, write_out
from .stats_view import stats_view


def add_commands(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser("stats", parents=[common],
                                 help="show the server's state (tables, or --json)")
    parser.add_argument("--json", action="store_true", help="print the stats map as JSON")
    parser.set_defaults(run=run)


async def run(args: argparse.Namespace) -> int:
    async with open_client(args) as client:
        stats = await client.stats()
    if args.json:
        write_out(json.dumps(stats, indent=2, sort_keys=True) + "\n")
    else:
        console = Console()
        print_rich(stats_view(stats, width=console.width), console)
    return 0
