"""The soak's report: the readable summary and the JSON results, from finished figures.

Design decision: the soak hands over everything it measured in one
`Results` object, and this module only formats it: no I/O but the returned
text and dict, so what is printed and what is written to `--json` cannot
drift apart. The memory timeline is thinned to at most TIMELINE_ROWS rows
for the terminal; the JSON keeps every sample.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from typing import Any

from soak_ledger import Verdict
from soak_memory import MIB, WARMUP_S, IncarnationMemory, Sample
from soak_server import Incarnation

TIMELINE_ROWS = 24


@dataclass
class Results:
    settings: dict[str, Any]
    load_s: float  # from the first worker's start to the stop of the load
    kills: int
    incarnations: list[Incarnation]
    verdict: Verdict
    drained: int
    left_after_drain: int
    drain_finished: bool
    samples: list[Sample]
    memory: list[IncarnationMemory]
    tolerance: int
    deaths: int
    leases_dropped: int
    reconnects: int
    unexpected: dict[str, int]
    problems: list[str] = field(default_factory=list)  # everything that fails the soak

    @property
    def passed(self) -> bool:
        return not self.problems


def summary(r: Results) -> str:
    """summary is the text printed at the end of a soak."""
    v = r.verdict
    s = r.settings
    after_kill = [inc.ready_s for before, inc in pairwise(r.incarnations)
                  if before.end == "kill -9"]
    first = r.incarnations[0].ready_s if r.incarnations else 0.0
    last = r.incarnations[-1].ready_s if len(r.incarnations) > 1 else 0.0
    lines = [
        f"soak: {r.load_s:.0f} s of load, {s['producers']} producers, {s['consumers']} consumers, "
        + (f"kill -9 every {s['kill_every']:g} s, " if s["kill_every"] else "no kills, ")
        + f"visibility {s['visibility']:g} s, die chance {s['die_chance']:g}, backlog "
        f"{s['min_backlog']:,}-{s['max_backlog']:,}, seed {s['seed']}, --fsync always",
        f"puts answered: {v.answered_puts:,} ({v.answered_puts / max(r.load_s, 1e-9):,.0f}/s); "
        f"acks confirmed during the load: {v.confirmed_acks - r.drained:,} "
        f"({(v.confirmed_acks - r.drained) / max(r.load_s, 1e-9):,.0f}/s)",
        f"kills: {r.kills}; exec to ready line: first start {first:.2f} s, after kill -9 "
        + (f"median {statistics.median(after_kill):.2f} s, max {max(after_kill):.2f} s"
           if after_kill else "-") + f", after the clean stop {last:.2f} s",
        f"consumer deaths: {r.deaths:,} holding {r.leases_dropped:,} leases; "
        f"reconnects: {r.reconnects:,}; compactions: "
        f"{sum(inc.marks['compactions'] for inc in r.incarnations)}; torn tails cut at "
        f"recovery: {sum(inc.marks['torn_tails_cut'] for inc in r.incarnations)}",
        "",
        "ledger:",
        f"  answered puts       {v.answered_puts:>12,}  acked exactly once {v.acked_once:,}, "
        f"by an uncertain ack that took effect {v.uncertain_applied:,}",
        f"  unanswered puts     {v.unanswered_puts:>12,}  appeared {v.unanswered_appeared:,} "
        f"(then vanished {v.unanswered_vanished:,}), never appeared "
        f"{v.unanswered_puts - v.unanswered_appeared:,}",
        f"  deliveries          {v.deliveries:>12,}  redelivered messages "
        f"{v.redelivered_messages:,} ({v.redeliveries:,} redeliveries: expected)",
        f"  acks confirmed      {v.confirmed_acks:>12,}  of which by the final drain "
        f"{r.drained:,}",
        f"  acks uncertain      {v.uncertain_acks:>12,}  later confirmed by another "
        f"{v.uncertain_not_applied:,}",
        f"  acks refused        {sum(v.refused_acks.values()):>12,}  "
        + (", ".join(f"{k} {n:,}" for k, n in sorted(v.refused_acks.items())) or "none"),
        f"  puts refused        {sum(v.refused_puts.values()):>12,}  "
        + (", ".join(f"{k} {n:,}" for k, n in sorted(v.refused_puts.items())) or "none"),
        f"  drain               {'finished' if r.drain_finished else 'DID NOT FINISH'}"
        + ("" if r.drain_finished else f", {r.left_after_drain:,} messages left"),
    ]
    for kind, (count, examples) in v.errors.items():
        lines.append(f"  ERROR {kind}: {count:,} (seqs {examples})")
    if r.unexpected:
        lines.append("  unexpected errors: "
                     + ", ".join(f"{k} {n}" for k, n in sorted(r.unexpected.items())))
    lines += ["", *memory_table(r), "", *incarnation_table(r), "", *timeline(r), ""]
    lines.append("verdict: " + ("PASS" if r.passed else "FAIL"))
    lines += [f"  - {problem}" for problem in r.problems]
    return "\n".join(lines)


def memory_table(r: Results) -> list[str]:
    lines = [f"memory per incarnation (RSS MiB; growth = highest RSS of the second half minus "
             f"the first's, after {WARMUP_S:g} s of warm-up; flagged above "
             f"{r.tolerance / MIB:.1f} MiB):",
             f"  {'inc':>3} {'samples':>7} {'first':>7} {'max':>7} {'last':>7} {'1st half':>8} "
             f"{'2nd half':>8} {'growth':>7} {'depth max':>9} {'journal MiB':>11}  check"]
    for m in r.memory:
        check = ("GROWTH" if m.flagged else "steady") if m.checked else "too short"
        halves = (f"{m.first_half_max / MIB:8.1f} {m.second_half_max / MIB:8.1f} "
                  f"{m.growth / MIB:7.1f}") if m.checked else f"{'':8} {'':8} {'':7}"
        lines.append(f"  {m.incarnation:>3} {m.samples:>7} {m.rss_first / MIB:7.1f} "
                     f"{m.rss_max / MIB:7.1f} {m.rss_last / MIB:7.1f} {halves} "
                     f"{m.depth_max:>9,} {m.journal_max / MIB:11.1f}  {check}")
    if not r.memory:
        lines.append("  (no samples)")
    return lines


def incarnation_table(r: Results) -> list[str]:
    lines = ["incarnations (soak seconds):",
             f"  {'inc':>3} {'pid':>7} {'port':>5} {'exec at':>8} {'ready s':>7} "
             f"{'ended at':>8}  end; recovery"]
    for inc in r.incarnations:
        lines.append(f"  {inc.number:>3} {inc.pid:>7} {inc.port:>5} {inc.exec_at:8.1f} "
                     f"{inc.ready_s:7.2f} {inc.ended_at:8.1f}  {inc.end}"
                     + (f"; {inc.recovered}" if inc.recovered else ""))
    return lines


def timeline(r: Results) -> list[str]:
    lines = ["memory over time (every sample in --json):",
             f"  {'at s':>6} {'inc':>3} {'RSS MiB':>8} {'depth':>7} {'journal MiB':>11} "
             f"{'puts/s':>8} {'acks/s':>8}"]
    step = max(1, -(-len(r.samples) // TIMELINE_ROWS))
    previous: Sample | None = None
    for i, s in enumerate(r.samples):
        if i % step and i != len(r.samples) - 1:
            continue
        if previous is not None and s.at > previous.at:
            rates = (f"{(s.puts - previous.puts) / (s.at - previous.at):8,.0f} "
                     f"{(s.acks - previous.acks) / (s.at - previous.at):8,.0f}")
        else:
            rates = f"{'':>8} {'':>8}"
        depth = f"{s.queue_messages:7,}" if s.queue_messages is not None else f"{'?':>7}"
        lines.append(f"  {s.at:6.0f} {s.incarnation:>3} {s.rss_bytes / MIB:8.1f} {depth} "
                     f"{s.journal_bytes / MIB:11.1f} {rates}")
        previous = s
    return lines


def as_json(r: Results) -> dict[str, Any]:
    v = r.verdict
    return {
        "settings": r.settings,
        "passed": r.passed,
        "problems": r.problems,
        "load_s": round(r.load_s, 3),
        "puts_answered_per_s": round(v.answered_puts / max(r.load_s, 1e-9), 1),
        "acks_confirmed_per_s": round((v.confirmed_acks - r.drained) / max(r.load_s, 1e-9), 1),
        "kills": r.kills,
        "restart_ready_s": [round(inc.ready_s, 3) for inc in r.incarnations[1:]],
        "consumer_deaths": r.deaths,
        "leases_dropped": r.leases_dropped,
        "reconnects": r.reconnects,
        "unexpected": r.unexpected,
        "ledger": {**{k: val for k, val in asdict(v).items() if k != "errors"},
                   "errors": {k: {"count": n, "examples": ex} for k, (n, ex)
                              in v.errors.items()}},
        "drain": {"drained": r.drained, "left": r.left_after_drain,
                  "finished": r.drain_finished},
        "incarnations": [{**{k: val for k, val in asdict(inc).items() if k != "marks"},
                          "marks": dict(inc.marks)} for inc in r.incarnations],
        "memory_tolerance_bytes": r.tolerance,
        "memory": [{**asdict(m), "flagged": m.flagged} for m in r.memory],
        "samples": [s.as_dict() for s in r.samples],
    }
