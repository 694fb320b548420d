"""The comparison's tables: medians of the runs, WonderQ's ratios, and RESULTS.md.

Design decision: every figure shown is the median of the completed runs of
one scenario on one system, with the min and max beside it; the server's
CPU per message stands next to each throughput, since it is the fairest
server-to-server figure (the Python load generator's own cost caps the
msgs/s of every system). Ratios are always WonderQ's median divided by the
peer's, so their direction follows the scenario's unit: above 1 is better
for msgs/s, below 1 is better for bytes/msg, seconds and CPU per message.

Rules:
* A run that stalled or failed is left out of the median and counted in
  the cell ("2/3 runs"); a scenario with no completed run shows its first
  note instead of figures.
* Paired ratios (`paired_table`) divide WonderQ's figure by the peer's in
  the same run, then take the median of those. Both figures of a pair come
  from the same stretch of machine time, so a machine whose speed drifts
  between runs (this project's shared VM moved by a third within an hour)
  moves both; the ratio of medians can pair a fast run of one system with
  a slow run of the other. Both are shown; neither replaces the other.
* Tables are Markdown, the same text printed and written to RESULTS.md.
* This module formats; it measures and runs nothing.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from runner import Result
from scenarios import SCENARIOS


@dataclass
class Summary:
    median: float | None
    low: float | None
    high: float | None
    server_us: float | None
    client_us: float | None
    p50_ms: float | None
    p99_ms: float | None
    completed: int
    runs: int
    notes: list[str]


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarize(results: list[Result]) -> dict[tuple[str, str], Summary]:
    """summarize groups results by (scenario, system) into medians with min and max."""
    by_key: dict[tuple[str, str], list[Result]] = {}
    for result in results:
        by_key.setdefault((result.scenario, result.system), []).append(result)
    summaries = {}
    for key, rows in by_key.items():
        done = [r for r in rows if r.value is not None]
        values = [r.value for r in done if r.value is not None]
        summaries[key] = Summary(
            median=statistics.median(values) if values else None,
            low=min(values) if values else None, high=max(values) if values else None,
            server_us=_median([r.server_us for r in done]),
            client_us=_median([r.client_us for r in done]),
            p50_ms=_median([r.p50_ms for r in done]), p99_ms=_median([r.p99_ms for r in done]),
            completed=len(done), runs=len(rows), notes=[r.note for r in rows if r.note])
    return summaries


def _number(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value:.2f}"
    if unit == "bytes/msg" or value >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}"


def _cell(summary: Summary | None, unit: str) -> str:
    if summary is None:
        return "-"
    if summary.median is None:
        return (summary.notes[0] if summary.notes else "no result")[:80]
    text = f"{_number(summary.median, unit)} [{_number(summary.low or 0, unit)}-" \
           f"{_number(summary.high or 0, unit)}]"
    if summary.server_us is not None:
        text += f" · {summary.server_us:.1f} µs"
    if summary.completed < summary.runs:
        text += f" ({summary.completed}/{summary.runs} runs)"
    return text


def _ratio(ours: Summary | None, theirs: Summary | None) -> str:
    if not ours or not theirs or ours.median is None or theirs.median is None \
            or not theirs.median:
        return "-"
    text = f"{ours.median / theirs.median:.2f}x"
    if ours.server_us and theirs.server_us:
        text += f" (cpu {ours.server_us / theirs.server_us:.2f}x)"
    return text


def main_table(summaries: dict[tuple[str, str], Summary], scenarios: list[str],
               systems: list[str]) -> str:
    """main_table: one row per scenario; per system median [min-max] · server µs/msg; ratios."""
    peers = [s for s in systems if s != "wonderq"]
    ours = "wonderq" in systems
    head = ["scenario", "unit", *systems, *([f"wonderq ÷ {p}" for p in peers] if ours else [])]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in scenarios:
        scenario = SCENARIOS[name]
        arrow = "↑" if scenario.higher_is_better else "↓"
        row = [f"{name} {scenario.title}", f"{scenario.unit} {arrow}"]
        row += [_cell(summaries.get((name, s)), scenario.unit) for s in systems]
        if ours:
            row += [_ratio(summaries.get((name, "wonderq")), summaries.get((name, p)))
                    for p in peers]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def paired_ratios(results: list[Result], scenario: str, peer: str) -> list[float]:
    """paired_ratios: for each run where both completed, WonderQ's figure ÷ the peer's."""
    values = {(r.system, r.run): r.value for r in results
              if r.scenario == scenario and r.value is not None}
    runs = sorted({run for _, run in values})
    return [values[("wonderq", run)] / values[(peer, run)] for run in runs
            if ("wonderq", run) in values and values.get((peer, run))]


def paired_table(results: list[Result], scenarios: list[str], systems: list[str]) -> str:
    """paired_table: per scenario and peer, the median [min-max] of the per-run ratios."""
    peers = [s for s in systems if s != "wonderq"]
    if "wonderq" not in systems or not peers:
        return ""
    lines = ["| scenario | " + " | ".join(f"wonderq ÷ {p}" for p in peers) + " |",
             "|" + "---|" * (len(peers) + 1)]
    for name in scenarios:
        cells = []
        for peer in peers:
            ratios = paired_ratios(results, name, peer)
            cells.append(f"{statistics.median(ratios):.2f}x [{min(ratios):.2f}-"
                         f"{max(ratios):.2f}] ({len(ratios)} runs)" if ratios else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def latency_table(summaries: dict[tuple[str, str], Summary], scenarios: list[str],
                  systems: list[str]) -> str:
    """latency_table: put-to-ack p50 / p99 in ms (medians of the runs) for S3 and S6."""
    names = [s for s in scenarios if s in ("S3", "S6")]
    if not names:
        return ""
    lines = ["| scenario | " + " | ".join(systems) + " |", "|" + "---|" * (len(systems) + 1)]
    for name in names:
        cells = []
        for system in systems:
            s = summaries.get((name, system))
            cells.append(f"{s.p50_ms:.2f} / {s.p99_ms:.2f}" if s and s.p50_ms is not None
                         and s.p99_ms is not None else "-")
        lines.append(f"| {name} p50 / p99 ms | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def client_table(summaries: dict[tuple[str, str], Summary], scenarios: list[str],
                 systems: list[str]) -> str:
    """client_table: the load generator's own CPU per message, per scenario and system."""
    names = [s for s in scenarios if s not in ("S7",)]
    lines = ["| scenario | " + " | ".join(systems) + " |", "|" + "---|" * (len(systems) + 1)]
    for name in names:
        cells = []
        for system in systems:
            s = summaries.get((name, system))
            cells.append(f"{s.client_us:.1f}" if s and s.client_us is not None else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def runs_table(results: list[Result]) -> str:
    """runs_table: every run's figures, in the order they ran, with its notes."""
    lines = ["| run | scenario | system | value | server µs/msg | client µs/msg | p50 / p99 ms "
             "| note |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        unit = SCENARIOS[r.scenario].unit
        value = f"{_number(r.value, unit)} {unit}" if r.value is not None else "-"
        latency = f"{r.p50_ms:.2f} / {r.p99_ms:.2f}" if r.p50_ms is not None \
            and r.p99_ms is not None else ""
        lines.append(f"| {r.run} | {r.scenario} | {r.system} | {value} | "
                     f"{'' if r.server_us is None else f'{r.server_us:.1f}'} | "
                     f"{'' if r.client_us is None else f'{r.client_us:.1f}'} | {latency} | "
                     f"{r.note.replace('|', '/')} |")
    return "\n".join(lines)


def legend(runs: int) -> str:
    return (f"Cells: median of {runs} interleaved run(s) [min-max] · the server's CPU time "
            "(user + system, from /proc/PID/stat) per message. Ratios: WonderQ's median ÷ "
            "the peer's (cpu: the same for server CPU per message); ↑ rows: above 1 means "
            "WonderQ is better; ↓ rows and cpu: below 1 means WonderQ is better.")
