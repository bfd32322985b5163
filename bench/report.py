"""The table with ratios, the goals, the JSON file and the chart of a run."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from .contenders import BROKERS
from .workloads import Record

__all__ = ["chart", "goals", "markdown", "table", "update_docs", "write_json"]

FAMILIES = ("runa", "faststream", "raw", "broadcaster")
COLORS = {"runa": "#2b6cb0", "faststream": "#dd6b20", "raw": "#718096", "broadcaster": "#38a169"}
#: Units where less is better (ratios below 1 favour runa).
LOWER_IS_BETTER = {"µs", "bytes/sub"}


def _index(records: Sequence[Record]) -> dict[tuple[str, str, str, str], Record]:
    return {(r.broker, r.workload, r.case, r.family): r for r in records}


def _value(record: Record | None, metric: str | None = None) -> float | None:
    if record is None or record.status != "ok":
        return None
    if metric:
        return record.metrics.get(metric)
    return record.median


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "bytes/sub":
        return f"{value:,.0f}"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:,.1f}"


def _cell(record: Record | None, metric: str | None, unit: str) -> str:
    if record is None:
        return ""
    if record.status == "error" and (record.reason or "").startswith("lost "):
        return (record.reason or "").split(":", 1)[0]  # "lost 40%"
    if record.status != "ok":
        return record.status
    return _fmt(_value(record, metric), unit)


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return ""
    return f"{a / b:.2f}×"


def _rows(records: Sequence[Record], broker: str) -> list[tuple[str, str, str, str | None]]:
    """(label, workload, case, metric) rows of ``broker`` in run order."""
    rows: list[tuple[str, str, str, str | None]] = []
    seen: set[tuple[str, str]] = set()
    for r in records:
        if r.broker != broker or (r.workload, r.case) in seen:
            continue
        seen.add((r.workload, r.case))
        if r.workload == "latency":
            for metric in ("p50", "p99", "max"):
                rows.append((f"latency {metric} (µs)", r.workload, r.case, metric))
        elif r.workload == "selective":
            rows.append(
                (f"selective {r.case} subs, 1 matches ({r.unit})", r.workload, r.case, None)
            )
        else:
            name = f"{r.workload} {r.case}".strip()
            if r.workload == "memory":
                name = f"memory, {int(r.case.split()[0]):,} subscriptions"
            rows.append((f"{name} ({r.unit})", r.workload, r.case, None))
    return rows


def _grids(records: Sequence[Record]) -> list[tuple[str, list[list[str]], dict[str, str]]]:
    """Per broker: its name, rows of cells (the first row is the header), and the reasons
    of cells that hold no number."""
    index = _index(records)
    grids = []
    for broker in BROKERS:
        present = [
            f for f in FAMILIES if any(r.broker == broker and r.family == f for r in records)
        ]
        if not present:
            continue
        labels = {
            f: next(r.label for r in records if r.broker == broker and r.family == f)
            for f in present
        }
        others = [f for f in present if f != "runa"]
        lines = [["", *(labels[f] for f in present), *(f"runa/{labels[f]}" for f in others)]]
        reasons: dict[str, str] = {}
        for label, workload, case, metric in _rows(records, broker):
            unit = (
                "µs"
                if metric
                else next(
                    r.unit
                    for r in records
                    if r.broker == broker and r.workload == workload and r.case == case
                )
            )
            row = [label]
            for f in present:
                record = index.get((broker, workload, case, f))
                cell = _cell(record, metric, unit)
                if record is not None and record.status != "ok" and record.reason:
                    reasons.setdefault(f"{labels[f]} {record.status}", record.reason)
                elif record is not None and record.errors and metric in (None, "p50"):
                    cell += "*"
                    reasons[f"* {labels[f]} {workload} {case}".rstrip()] = (
                        f"{len(record.errors)} of {len(record.errors) + len(record.values)} "
                        f"rounds failed: {record.errors[0]}"
                    )
                row.append(cell)
            runa = _value(index.get((broker, workload, case, "runa")), metric)
            for f in others:
                row.append(_ratio(runa, _value(index.get((broker, workload, case, f)), metric)))
            lines.append(row)
        grids.append((broker, lines, reasons))
    return grids


RATIO_NOTE = (
    "Ratios are runa's value over the other's: above 1 is better for rates, below 1 is "
    "better for µs and bytes."
)


def table(records: Sequence[Record]) -> str:
    """The results as text: one block per broker, contenders as columns, then ratios."""
    out: list[str] = []
    for broker, lines, reasons in _grids(records):
        widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
        out.append(f"== {broker} ==")
        for line in lines:
            out.append(
                "  ".join(
                    cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
                    for i, cell in enumerate(line)
                )
            )
        for what, reason in reasons.items():
            out.append(f"  {what}: {reason}")
        out.append("")
    out.append(RATIO_NOTE)
    return "\n".join(out)


def markdown(
    records: Sequence[Record], goal_items: Sequence[dict[str, Any]], meta: dict[str, Any]
) -> str:
    """The results as Markdown: machine and versions, one table per broker, the goals."""
    env = meta.get("environment", {})
    machine = env.get("machine", {})
    sizes = meta.get("sizes", {})
    versions = {k: v for k, v in env.get("versions", {}).items() if v}
    servers = [v for v in env.get("servers", {}).values() if v]
    gib = (machine.get("memory_bytes") or 0) / 2**30
    out = [
        f"Measured {meta.get('date', '?')} with `{meta.get('command', 'python -m bench')}` "
        f"({meta.get('duration_s', 0) / 60:.0f} minutes): {_rounds(sizes.get('rounds'))}; "
        f"{sizes.get('messages'):,} messages per throughput trial, {sizes.get('latency'):,} "
        f"round trips per latency trial, {sizes.get('memory_subscriptions'):,} subscriptions "
        "for the memory footprint.",
        "",
        f"- Machine: {machine.get('cpu')}, {machine.get('cores')} cores, {gib:.0f} GiB, "
        f"{machine.get('platform')}",
        f"- Python: {env.get('python')}, event loop `{env.get('event_loop')}`",
        f"- Brokers: {'; '.join(servers)}; MQTT: {meta.get('mqtt_broker') or 'not run'}",
        "- Libraries: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        "",
    ]
    for broker, lines, reasons in _grids(records):
        out.append(f"### {broker}")
        out.append("")
        out.append("| " + " | ".join(lines[0]) + " |")
        out.append("|" + "|".join(["---", *["---:"] * (len(lines[0]) - 1)]) + "|")
        for line in lines[1:]:
            out.append("| " + " | ".join(line) + " |")
        out.append("")
        for what, reason in reasons.items():
            out.append(f"- {what}: {reason}")
        if reasons:
            out.append("")
    out.append(RATIO_NOTE)
    out.append("")
    out.append("### Goals")
    out.append("")
    out.append("| goal | measured | target | |")
    out.append("|---|---:|---:|---|")
    for g in goal_items:
        state = {True: "met", False: "**not met**", None: "n/a"}[g["passed"]]
        measured = "-" if g["measured"] is None else f"{g['measured']:.2f}{g['unit']}"
        out.append(f"| {g['goal']} | {measured} | {g['op']} {g['target']:g}{g['unit']} | {state} |")
    out.append("")
    return "\n".join(out)


START_MARK = "<!-- bench:results:start -->"
END_MARK = "<!-- bench:results:end -->"


def update_docs(path: str, text: str) -> bool:
    """Replace the text between the result markers of ``path``; False when it has none."""
    with open(path, encoding="utf-8") as f:
        page = f.read()
    start, end = page.find(START_MARK), page.find(END_MARK)
    if start < 0 or end < start:
        return False
    page = page[: start + len(START_MARK)] + "\n" + text + page[end:]
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)
    return True


# -- goals ----------------------------------------------------------------------------------


def goals(records: Sequence[Record]) -> list[dict[str, Any]]:
    """The targets of the issue, each with what this run measured."""
    index = _index(records)
    result: list[dict[str, Any]] = []

    def get(
        broker: str, workload: str, case: str, family: str, metric: str | None = None
    ) -> float | None:
        return _value(index.get((broker, workload, case, family)), metric)

    def ratio_goal(
        text: str,
        broker: str,
        workload: str,
        case: str,
        other: str,
        op: str,
        target: float,
        metric: str | None = None,
    ) -> None:
        runa = get(broker, workload, case, "runa", metric)
        peer = get(broker, workload, case, other, metric)
        measured = runa / peer if runa is not None and peer else None
        result.append(_goal(text, measured, op, target, "×"))

    for target in (1.0, 1.5):  # at least broadcaster's rate; half as much again
        ratio_goal(
            "memory: throughput runa (typed attrs) / broadcaster (strings)",
            "memory",
            "throughput",
            "",
            "broadcaster",
            "≥",
            target,
        )
    memory_case = next((r.case for r in records if r.workload == "memory"), "")
    runa_mem = get("memory", "memory", memory_case, "runa")
    bc_mem = get("memory", "memory", memory_case, "broadcaster")
    result.append(
        _goal(
            "memory: broadcaster's resident size per subscription / runa's (typed attrs payloads)",
            bc_mem / runa_mem if runa_mem and bc_mem is not None else None,
            "≥",
            1.5,
            "×",
        )
    )
    concurrent = next((r.case for r in records if r.workload == "concurrent"), "")
    ratio_goal(
        "redis: throughput runa / FastStream", "redis", "throughput", "", "faststream", "≥", 1.5
    )
    ratio_goal(
        "redis: concurrent publishers runa / raw pipelined",
        "redis",
        "concurrent",
        concurrent,
        "raw",
        "≥",
        0.8,
    )
    ratio_goal(
        "redis: throughput runa / raw sequential", "redis", "throughput", "", "raw", "≥", 0.9
    )
    ratio_goal(
        "nats: throughput runa / FastStream", "nats", "throughput", "", "faststream", "≥", 3.0
    )
    ratio_goal(
        "amqp: throughput runa / FastStream", "amqp", "throughput", "", "faststream", "≥", 1.5
    )
    ratio_goal("amqp: throughput runa / raw aio-pika", "amqp", "throughput", "", "raw", "≥", 0.9)
    ratio_goal(
        "mqtt: throughput runa / FastStream", "mqtt", "throughput", "", "faststream", "≥", 2.0
    )
    ratio_goal("mqtt: throughput runa / raw paho", "mqtt", "throughput", "", "raw", "≥", 0.7)
    for broker in ("redis", "nats", "amqp", "mqtt"):
        ratio_goal(
            f"{broker}: latency p99 runa / FastStream",
            broker,
            "latency",
            "",
            "faststream",
            "≤",
            0.8,
            metric="p99",
        )
    result.append(
        _goal(
            "memory: latency p99 (µs)",
            get("memory", "latency", "", "runa", "p99"),
            "<",
            50.0,
            " µs",
        )
    )
    fanouts = sorted({r.case for r in records if r.workload == "fanout"})
    selective = sorted({int(r.case) for r in records if r.workload == "selective"})
    for broker in BROKERS:
        if len(selective) > 1:
            one = get(broker, "selective", str(selective[0]), "runa")
            most = get(broker, "selective", str(selective[-1]), "runa")
            result.append(
                _goal(
                    f"{broker}: msg/s with {selective[-1]} subscriptions (1 matching) / with "
                    f"{selective[0]}",
                    most / one if one and most is not None else None,
                    "≥",
                    0.5,
                    "×",
                )
            )
        for kind in ("exact", "wildcard"):
            cases = [c for c in fanouts if c.startswith(kind + " ")]
            if not cases:
                continue
            ks = sorted(int(c.split()[1]) for c in cases)
            one, most = (
                get(broker, "fanout", f"{kind} {ks[0]}", "runa"),
                get(broker, "fanout", f"{kind} {ks[-1]}", "runa"),
            )
            if ks[-1] == ks[0]:
                continue
            result.append(
                _goal(
                    f"{broker}: fan-out {kind}, deliveries/s with {ks[-1]} subscriptions / with {ks[0]}",
                    most / one if one and most is not None else None,
                    "≥",
                    0.5,
                    "×",
                )
            )
    present = {r.broker for r in records if r.status == "ok"}
    return [g for g in result if g["broker"] in present]


def _goal(text: str, measured: float | None, op: str, target: float, unit: str) -> dict[str, Any]:
    if measured is None:
        passed = None
    elif op == "≥":
        passed = measured >= target
    elif op == "≤":
        passed = measured <= target
    else:
        passed = measured < target
    return {
        "broker": text.split(":", 1)[0],
        "goal": text,
        "measured": measured,
        "op": op,
        "target": target,
        "unit": unit,
        "passed": passed,
    }


def goals_text(items: Sequence[dict[str, Any]]) -> str:
    """The goals as lines: PASS / FAIL / n/a, measured against target."""
    lines = ["Goals:"]
    for g in items:
        state = {True: "PASS", False: "FAIL", None: "n/a "}[g["passed"]]
        unit = g["unit"]
        measured = "-" if g["measured"] is None else f"{g['measured']:.2f}{unit}"
        lines.append(f"  {state}  {g['goal']}: {measured} (target {g['op']} {g['target']:g}{unit})")
    return "\n".join(lines)


# -- files ----------------------------------------------------------------------------------


def write_json(path: str, document: dict[str, Any]) -> None:
    """Write the run as indented JSON (creating the folder)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(document, f, indent=1, ensure_ascii=False, default=str)
        f.write("\n")


def _footer(meta: dict[str, Any]) -> str:
    env = meta.get("environment", {})
    machine = env.get("machine", {})
    versions = {k: v for k, v in env.get("versions", {}).items() if v}
    servers = [v for v in env.get("servers", {}).values() if v]
    picks = (
        "runa-message-core",
        "faststream",
        "broadcaster",
        "redis",
        "nats-py",
        "aio-pika",
        "paho-mqtt",
        "zmqtt",
        "pydantic",
    )
    libs = ", ".join(f"{k} {versions[k]}" for k in picks if k in versions)
    sizes = meta.get("sizes", {})
    return (
        f"{machine.get('cpu', '?')}, {machine.get('cores', '?')} cores; {env.get('python', '')}; "
        f"{meta.get('date', '')}; {_rounds(sizes.get('rounds'))}, "
        f"{sizes.get('messages', '?')} messages\n{libs}\n{'; '.join(servers)}"
    )


def chart(path: str, records: Sequence[Record], meta: dict[str, Any]) -> None:
    """A 2×2 PNG: throughput, concurrent publishers, p99 latency, runa's fan-out scaling."""
    # Figure without pyplot: no GUI backend machinery, and a third of the import time.
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    index = _index(records)
    brokers = [b for b in BROKERS if any(r.broker == b for r in records)]
    fig = Figure(figsize=(13, 9))
    axes = fig.subplots(2, 2)
    concurrent = next((r.case for r in records if r.workload == "concurrent"), "")
    panels = [
        (axes[0][0], "throughput", "", None, "Throughput, one publisher (msg/s, log)"),
        (
            axes[0][1],
            "concurrent",
            concurrent,
            None,
            f"Concurrent publishers: {concurrent} (msg/s, log)",
        ),
        (
            axes[1][0],
            "latency",
            "",
            "p99",
            "Publish → handler latency p99 (µs, log; lower is better)",
        ),
    ]
    width = 0.8 / len(FAMILIES)
    for ax, workload, case, metric, title in panels:
        for n, family in enumerate(FAMILIES):
            xs, ys = [], []
            for x, broker in enumerate(brokers):
                value = _value(index.get((broker, workload, case, family)), metric)
                if value:
                    xs.append(x + (n - (len(FAMILIES) - 1) / 2) * width)
                    ys.append(value)
            if xs:
                bars = ax.bar(xs, ys, width, label=family, color=COLORS[family])
                for bar, y in zip(bars, ys, strict=True):
                    ax.annotate(
                        _short(y),
                        (bar.get_x() + bar.get_width() / 2, y),
                        ha="center",
                        va="bottom",
                        fontsize=6.5,
                        rotation=90,
                        xytext=(0, 2),
                        textcoords="offset points",
                    )
        ax.set_yscale("log")
        ax.set_xticks(range(len(brokers)), brokers)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3, which="both")
        ax.margins(y=0.2)
    axes[0][0].legend(fontsize=8)
    ax = axes[1][1]
    fanouts = sorted(
        {r.case for r in records if r.workload == "fanout"},
        key=lambda c: (c.split()[0], int(c.split()[1])),
    )
    cmap = colormaps["tab10"]
    for n, broker in enumerate(brokers):
        for kind, style in (("exact", "-"), ("wildcard", "--")):
            cases = [c for c in fanouts if c.startswith(kind + " ")]
            points: list[tuple[int, float]] = []
            for c in cases:
                value = _value(index.get((broker, "fanout", c, "runa")))
                if value:
                    points.append((int(c.split()[1]), value))
            if len(points) < 2:
                continue
            base = points[0][1]
            ax.plot(
                [k for k, _ in points],
                [v / base for _, v in points],
                style,
                marker="o",
                color=cmap(n),
                label=f"{broker} {kind}",
            )
        chosen: list[tuple[int, float]] = []
        for r in records:
            value = _value(r)
            if r.broker == broker and r.workload == "selective" and r.family == "runa" and value:
                chosen.append((int(r.case), value))
        chosen.sort()
        if len(chosen) > 1:
            ax.plot(
                [k for k, _ in chosen],
                [v / chosen[0][1] for _, v in chosen],
                ":",
                marker="s",
                color=cmap(n),
                label=f"{broker} 1 of k matches (msg/s)",
            )
    ax.axhline(0.5, color="#c53030", linewidth=0.8, linestyle=":")
    ax.set_xscale("log")
    ax.set_xlabel("subscriptions (solid/dashed: all receive every message; dotted: one does)")
    ax.set_title("runa with k subscriptions, relative to one (goal ≥ 0.5)", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, ncol=2)
    fig.suptitle("runa-message vs FastStream, broadcaster and raw clients", fontsize=13)
    fig.text(0.01, 0.005, _footer(meta), fontsize=7, va="bottom", family="monospace")
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)


def _rounds(count: Any) -> str:
    return "one round" if count == 1 else f"medians of {count} rounds"


def _short(value: float) -> str:
    if value >= 1e6:
        return f"{value / 1e6:.1f}M"
    if value >= 1e3:
        return f"{value / 1e3:.1f}k"
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"
