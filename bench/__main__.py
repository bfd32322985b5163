"""``python -m bench``: run the benchmarks, print the table, write JSON and the chart.

Examples::

    python -m bench                               # everything, 3 rounds
    python -m bench --brokers memory,redis --rounds 3
    python -m bench --smoke                       # tiny sizes, one round: checks the harness

A contender whose library or broker is unavailable is reported as missing. With
``--smoke`` and the ``CI`` environment variable set, a missing or failing runa contender
makes the run fail (exit code 1): CI must exercise every runa driver.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import json
import os
import sys
import time
from typing import Any

from . import environment, report, workloads
from .brokers import private_mosquitto
from .contenders import BROKERS, all_contenders

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="runa-message against FastStream, broadcaster and raw broker clients.",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny sizes and one round, to check the harness (no speed claims)",
    )
    parser.add_argument(
        "--brokers",
        default=",".join(BROKERS),
        help=f"comma-separated subset of {','.join(BROKERS)} (default: all)",
    )
    parser.add_argument("--rounds", type=int, help="rounds per case (default 3, smoke 1)")
    parser.add_argument(
        "--messages", type=int, help="messages per throughput trial (default 20000)"
    )
    parser.add_argument("--latency", type=int, help="round trips per latency trial (default 2000)")
    parser.add_argument("--fanout", help="subscription counts for fan-out, e.g. 1,10,100")
    parser.add_argument(
        "--contenders", help="comma-separated subset of runa,faststream,raw,broadcaster"
    )
    parser.add_argument(
        "--workloads",
        help="comma-separated subset of throughput,concurrent,latency,fanout,selective,memory",
    )
    parser.add_argument(
        "--out",
        help="JSON output (default bench/results/latest.json; smoke: bench/results/smoke.json)",
    )
    parser.add_argument(
        "--chart",
        help="PNG chart (default docs/img/benchmarks.png; "
        "smoke: bench/results/smoke.png); 'none' to skip",
    )
    parser.add_argument(
        "--docs",
        help="Markdown page whose results section to rewrite (default: "
        "docs/benchmarks.md after a full run of everything; 'none' to skip)",
    )
    parser.add_argument(
        "--from",
        dest="from_json",
        metavar="JSON",
        help="measure nothing: print, chart (--chart) and write --docs from a recorded run",
    )
    parser.add_argument("--quiet", action="store_true", help="no per-trial progress lines")
    return parser


def _sizes(args: argparse.Namespace) -> workloads.Sizes:
    sizes = workloads.SMOKE if args.smoke else workloads.FULL
    changes: dict[str, Any] = {}
    if args.rounds is not None:
        changes["rounds"] = args.rounds
    if args.messages is not None:
        changes["messages"] = args.messages
    if args.latency is not None:
        changes["latency"] = args.latency
    if args.fanout:
        changes["fanout"] = tuple(int(k) for k in args.fanout.split(","))
    return dataclasses.replace(sizes, **changes)


async def _main(args: argparse.Namespace) -> int:
    brokers = [b.strip() for b in args.brokers.split(",") if b.strip()]
    unknown = sorted(set(brokers) - set(BROKERS))
    if unknown:
        print(
            f"unknown broker(s) {', '.join(unknown)}: choose from {', '.join(BROKERS)}",
            file=sys.stderr,
        )
        return 2
    sizes = _sizes(args)
    out = args.out or os.path.join(HERE, "results", "smoke.json" if args.smoke else "latest.json")
    chart = args.chart or (
        os.path.join(HERE, "results", "smoke.png")
        if args.smoke
        else os.path.join(ROOT, "docs", "img", "benchmarks.png")
    )

    def progress(line: str) -> None:
        if not args.quiet:
            print(line, file=sys.stderr, flush=True)

    with contextlib.ExitStack() as stack:
        mqtt = stack.enter_context(private_mosquitto()) if "mqtt" in brokers else None
        return await _run(args, brokers, sizes, out, chart, progress, mqtt)


async def _run(
    args: argparse.Namespace,
    brokers: list[str],
    sizes: workloads.Sizes,
    out: str,
    chart: str,
    progress: Any,
    mqtt: str | None,
) -> int:
    contenders = all_contenders(brokers)
    if args.contenders:
        families = {f.strip() for f in args.contenders.split(",")}
        contenders = [c for c in contenders if c.family in families]
    started = time.perf_counter()
    env = await environment.collect()
    only = {w.strip() for w in args.workloads.split(",")} if args.workloads else None
    records = await workloads.run(
        contenders, sizes, brokers, progress, parallel=args.smoke, workloads=only
    )
    duration = time.perf_counter() - started
    goals = report.goals(records)
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "duration_s": round(duration, 1),
        "smoke": args.smoke,
        "brokers": brokers,
        "sizes": dataclasses.asdict(sizes),
        "environment": env,
        "mqtt_broker": mqtt,
        "command": " ".join(["python -m bench", *sys.argv[1:]]),
    }
    document = {
        "meta": meta,
        "contenders": [
            {
                "broker": c.broker,
                "family": c.family,
                "label": c.label,
                "settings": c.settings(),
                "status": "missing"
                if any(
                    r.status == "missing"
                    for r in records
                    if r.broker == c.broker and r.family == c.family
                )
                else "ok",
            }
            for c in contenders
        ],
        "records": [r.as_dict() for r in records],
        "goals": goals,
    }
    report.write_json(out, document)
    complete = not (args.smoke or args.contenders or args.workloads) and brokers == list(BROKERS)
    docs = args.docs or (os.path.join(ROOT, "docs", "benchmarks.md") if complete else "none")
    _publish(records, meta, chart, docs)
    print(f"\n{len(records)} results in {duration:.0f} s; JSON: {out}")
    if args.smoke and os.environ.get("CI"):
        bad = [r for r in records if r.family == "runa" and r.status in ("missing", "error")]
        if bad:
            for r in bad:
                print(
                    f"CI smoke: runa on {r.broker} {r.workload} {r.case}: {r.status}: {r.reason}",
                    file=sys.stderr,
                )
            return 1
    return 0


def _publish(records: list[workloads.Record], meta: dict[str, Any], chart: str, docs: str) -> None:
    """Draw the chart, rewrite the docs section, print the table and the goals."""
    goals = report.goals(records)
    if chart != "none":
        try:
            report.chart(chart, records, meta)
            print(f"chart: {chart}", file=sys.stderr)
        except ImportError as exc:
            print(f"no chart ({exc}): install bench/requirements.txt", file=sys.stderr)
    if docs != "none":
        if report.update_docs(docs, report.markdown(records, goals, meta)):
            print(f"results written into {docs}", file=sys.stderr)
        else:
            print(
                f"{docs} has no {report.START_MARK} ... {report.END_MARK} section", file=sys.stderr
            )
    print(report.table(records))
    print()
    if meta.get("smoke"):
        print("Smoke run: the sizes are too small for the numbers and goals to mean anything.")
    print(report.goals_text(goals))


def _from_json(args: argparse.Namespace) -> int:
    """Report a run already recorded in JSON, without measuring anything."""
    with open(args.from_json, encoding="utf-8") as f:
        document = json.load(f)
    records = [workloads.Record(**r) for r in document["records"]]
    _publish(records, document["meta"], args.chart or "none", args.docs or "none")
    return 0


def main(argv: list[str] | None = None) -> int:
    """The command line entry point."""
    args = _parser().parse_args(argv)
    if args.from_json:
        return _from_json(args)
    return asyncio.run(_main(args))


if __name__ == "__main__":
    sys.exit(main())
