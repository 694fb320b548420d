"""WonderQ side by side with beanstalkd, Redis Streams and NATS JetStream (issue 6): one command.

    python bench/compare.py [--runs 3] [--scenarios S1,S2,S3,S4p,S4c,S5,S6,S7]
                            [--messages 50000] [--s5-messages 1000000]
                            [--systems wonderq,beanstalkd,redis,nats]
                            [--time-limit SECONDS] [--results bench/RESULTS.md]
                            [--busy-poll MICROSECONDS]

Design decision: this module only decides what runs when: it checks which
systems are installed (a missing one is skipped with a note), then runs the
scenario groups with runs interleaved across systems (run 1 of every
system, then run 2, ...; the order of the systems rotates each run) so
machine noise spreads evenly, and prints and writes the medians and the
paired ratios (each run's WonderQ figure over the peer's). Starting
servers is servers.py's, the load is scenarios.py's, a group's phases and
figures are runner.py's, the tables are report.py's.

Rules:
* It installs nothing; bench/README.md says how to install the peers.
* Every server is started on 127.0.0.1 and stopped by its PID, also on
  errors, Ctrl-C and SIGTERM; temporary data directories are removed.
* `--scenarios S4` means S4p and S4c. `--s5-messages` is the backlog of
  both S5 and S7.
* RESULTS.md is written only when every selected run finished (stalled or
  failed runs count as finished, and are shown as such).
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

import environment  # noqa: E402
import report  # noqa: E402
import systems  # noqa: E402
from runner import GROUPS, Options, Result, run_group  # noqa: E402
from scenarios import SCENARIOS  # noqa: E402
from servers import stop_all  # noqa: E402

ALL_SCENARIOS = list(SCENARIOS)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs per scenario and system")
    parser.add_argument("--scenarios", default=",".join(ALL_SCENARIOS),
                        help="comma-separated: S1,S2,S3,S4p,S4c (or S4),S5,S6,S7")
    parser.add_argument("--messages", type=int, default=50000,
                        help="messages per run in S1-S4 and S6")
    parser.add_argument("--s5-messages", type=int, default=1_000_000,
                        help="messages queued in S5 and S7")
    parser.add_argument("--systems", default=",".join(systems.MODULES),
                        help="comma-separated: " + ",".join(systems.MODULES))
    parser.add_argument("--time-limit", type=float, default=None, metavar="SECONDS",
                        help="time limit of each phase (default: 60 s + 1 ms per message)")
    parser.add_argument("--results", type=Path, default=BENCH / "RESULTS.md",
                        help="where to write the results (Markdown)")
    parser.add_argument("--busy-poll", type=int, default=0, metavar="MICROSECONDS",
                        help="run WonderQ's server with --busy-poll MICROSECONDS and its "
                             "client with busy_poll of as many microseconds (default 0: off, "
                             "as both ship)")
    args = parser.parse_args(argv)
    wanted: list[str] = []
    for name in args.scenarios.split(","):
        name = name.strip()
        expanded = ["S4p", "S4c"] if name.upper() == "S4" else [
            s for s in ALL_SCENARIOS if s.lower() == name.lower()]
        if not expanded:
            parser.error(f"unknown scenario {name!r}; choose from {','.join(ALL_SCENARIOS)}")
        wanted += [s for s in expanded if s not in wanted]
    args.scenario_list = [s for s in ALL_SCENARIOS if s in wanted]
    names = [s.strip().lower() for s in args.systems.split(",") if s.strip()]
    for name in names:
        if name not in systems.MODULES:
            parser.error(f"unknown system {name!r}; choose from {','.join(systems.MODULES)}")
    args.system_list = [s for s in systems.MODULES if s in names]  # WonderQ's column first
    if args.runs < 1 or args.messages < 1 or args.s5_messages < 1:
        parser.error("--runs, --messages and --s5-messages must be at least 1")
    if not 0 <= args.busy_poll <= 10_000:
        parser.error("--busy-poll must be 0 (off) to 10000 microseconds")
    if not args.results.parent.is_dir():  # found out at the end, it threw the run away
        parser.error(f"--results: no directory {str(args.results.parent)!r} to write it in")
    return args


def available(names: list[str]) -> tuple[list[ModuleType], list[str]]:
    """available loads the adapters whose server and client are installed; notes the rest."""
    found, notes = [], []
    for name in names:
        try:
            module = systems.load(name)
        except ImportError as exc:
            notes.append(f"{name} skipped: {exc}")
            continue
        reason = module.missing()
        if reason:
            notes.append(f"{name} skipped: {reason}")
        else:
            found.append(module)
    return found, notes


def _print_result(result: Result) -> None:
    unit = SCENARIOS[result.scenario].unit
    value = "-" if result.value is None else f"{result.value:,.2f} {unit}"
    cpu = "" if result.server_us is None else f"  server {result.server_us:.1f} µs/msg"
    client = "" if result.client_us is None else f"  client {result.client_us:.1f} µs/msg"
    latency = "" if result.p50_ms is None or result.p99_ms is None else \
        f"  p50 {result.p50_ms:.2f} ms  p99 {result.p99_ms:.2f} ms"
    note = f"  ({result.note})" if result.note else ""
    print(f"  run {result.run} {result.scenario:4s} {result.system:10s} {value:>22s}"
          f"{cpu}{client}{latency}{note}", flush=True)


def run_all(args: argparse.Namespace, chosen: list[ModuleType], tmp_root: Path,
            results: list[Result]) -> None:
    """run_all runs every selected group, interleaved; appends to `results` as it goes."""
    options = Options(args.messages, args.s5_messages, args.time_limit, tmp_root)
    selected = set(args.scenario_list)
    for run in range(1, args.runs + 1):
        shift = (run - 1) % len(chosen)
        order = chosen[shift:] + chosen[:shift]
        for group in GROUPS:
            if not selected.intersection(group):
                continue
            for system in order:
                for result in run_group(system, group, selected, run, options):
                    _print_result(result)
                    results.append(result)


def results_markdown(args: argparse.Namespace, chosen: list[ModuleType], notes: list[str],
                     results: list[Result], started: datetime.datetime,
                     seconds: float) -> str:
    names = [s.NAME for s in chosen]
    summaries = report.summarize(results)
    command = "python bench/compare.py " + shlex.join(sys.argv[1:])
    parts = [
        "# WonderQ compared with beanstalkd, Redis Streams and NATS JetStream",
        "",
        f"Written by `{command.strip()}` on {started:%Y-%m-%d %H:%M} "
        f"(took {seconds / 60:.1f} min). What each scenario measures and every asymmetry "
        "between the systems: [README.md](README.md).",
        "",
        f"{args.messages:,} messages per run in S1-S4 and S6"
        + (f"; {args.s5_messages:,} in S5 and S7" if {"S5", "S7"} & set(args.scenario_list)
           else "") + "; 100-byte bodies; loopback.",
        "",
        report.legend(args.runs), "",
        report.main_table(summaries, args.scenario_list, names), "",
    ]
    paired = report.paired_table(results, args.scenario_list, names)
    if paired:
        parts += ["## Paired ratios", "",
                  "Each run's WonderQ figure ÷ the peer's in the same run; median [min-max] "
                  "of those (report.py says when it is steadier than the ratio of medians).",
                  "", paired, ""]
    latency = report.latency_table(summaries, args.scenario_list, names)
    if latency:
        parts += ["## Put-to-ack latency (S3, S6)", "", latency, ""]
    parts += ["## The load generator's own CPU per message (µs)", "",
              "The Python load generator (one process, every system's client library in "
              "it) is the bottleneck of S1-S3 for the fast servers.", "",
              report.client_table(summaries, args.scenario_list, names), ""]
    machine = environment.machine(args.tmp_root)
    stolen, total = (after - before for after, before in zip(
        environment.cpu_ticks(), args.ticks_before, strict=True))
    if total > 0:
        machine["CPU time stolen by other guests during the run"] = (
            f"{100 * stolen / total:.1f}% (/proc/stat; above a few per cent, the machine was "
            "shared and every figure is lower than it would be alone)")
    parts += ["## Machine", ""] + [f"* {k}: {v}" for k, v in machine.items()]
    parts += ["", "## Versions", ""] + [
        f"* {k}: {v}" for k, v in environment.versions(chosen).items()]
    if notes:
        parts += ["", "## Skipped", ""] + [f"* {n}" for n in notes]
    parts += ["", "## Every run", "", report.runs_table(results), ""]
    return "\n".join(parts)


def main() -> int:
    args = parse_args()
    chosen, notes = available(args.system_list)
    for system in chosen:
        if system.NAME == "wonderq":
            system.BUSY_POLL_US = args.busy_poll
    for note in notes:
        print(note)
    if not chosen:
        print("no system to run")
        return 1
    # Ctrl-C and SIGTERM both end in KeyboardInterrupt, so servers are stopped by
    # their PIDs (SIGINT is set explicitly: a shell may start us with it ignored). SIGTERM
    # is turned into SIGINT, so that the running group's event loop (asyncio.Runner)
    # cancels its task cleanly rather than having KeyboardInterrupt raised anywhere.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda signum, frame: signal.raise_signal(signal.SIGINT))
    started, t0 = datetime.datetime.now(), time.monotonic()
    args.ticks_before = environment.cpu_ticks()
    tmp_root = args.tmp_root = Path(tempfile.mkdtemp(prefix="wonderq-compare-"))
    print(f"systems: {', '.join(s.NAME for s in chosen)}; scenarios: "
          f"{','.join(args.scenario_list)}; {args.runs} run(s), interleaved", flush=True)
    results: list[Result] = []
    interrupted = False
    try:
        run_all(args, chosen, tmp_root, results)
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: servers stopped, partial results below, RESULTS.md not written")
    finally:
        stop_all()
        shutil.rmtree(tmp_root, ignore_errors=True)
    names = [s.NAME for s in chosen]
    summaries = report.summarize(results)
    print()
    print(report.legend(args.runs))
    print(report.main_table(summaries, args.scenario_list, names))
    paired = report.paired_table(results, args.scenario_list, names)
    if paired:
        print()
        print("Paired ratios: each run's WonderQ figure ÷ the peer's in the same run, "
              "median [min-max]")
        print(paired)
    latency = report.latency_table(summaries, args.scenario_list, names)
    if latency:
        print()
        print(latency)
    if interrupted:
        return 130
    args.results.write_text(results_markdown(args, chosen, notes, results, started,
                                             time.monotonic() - t0))
    print(f"\nwritten to {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
