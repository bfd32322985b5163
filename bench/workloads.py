"""The workloads, and the run that alternates contenders over rounds.

Every measured trial opens a fresh session (setup is not timed), waits until every
subscription receives a probe, collects garbage, then starts the clock. Per broker, each
case runs ``rounds`` times; in each round every contender runs once, in an order rotated
from round to round so that none always goes first. Medians over rounds are reported.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .contenders import Contender, Plan, Sink

__all__ = ["FULL", "SMOKE", "Case", "Record", "Sizes", "cases", "run"]

_RUN = uuid.uuid4().hex[:6]
_counter = 0


def _topic() -> str:
    """A topic no earlier trial used (unique per process and trial)."""
    global _counter
    _counter += 1
    return f"bench.{_RUN}.t{_counter}"


@dataclass(frozen=True)
class Sizes:
    """How much work each workload does."""

    messages: int = 20_000
    #: Deliveries per fan-out and selective trial (9 cases: smaller keeps the run short).
    fanout_deliveries: int = 5_000
    latency: int = 2_000
    publishers: int = 100
    fanout: tuple[int, ...] = (1, 10, 100)
    memory_subscriptions: int = 10_000
    rounds: int = 3
    warmup: int = 1_000
    #: Seconds a trial may take at most (a stall of STALL seconds fails it sooner).
    timeout: float = 600.0


FULL = Sizes()
SMOKE = Sizes(
    messages=100,
    fanout_deliveries=100,
    latency=20,
    publishers=100,
    fanout=(3,),
    memory_subscriptions=200,
    rounds=1,
    warmup=0,
    timeout=20.0,
)


@dataclass(frozen=True)
class Case:
    """One measured thing: a workload, a variant of it, and its unit."""

    workload: str
    name: str
    unit: str
    subscriptions: int = 1
    wildcard: bool = False
    decoys: int = 0

    @property
    def key(self) -> str:
        """``workload`` or ``workload/name``."""
        return f"{self.workload}/{self.name}" if self.name else self.workload


def cases(broker: str, sizes: Sizes) -> list[Case]:
    """The cases measured on ``broker``."""
    result = [
        Case("throughput", "", "msg/s"),
        Case("concurrent", f"{sizes.publishers} publishers", "msg/s"),
        Case("latency", "", "µs"),
    ]
    for wildcard in (False, True):
        for k in sizes.fanout:
            kind = "wildcard" if wildcard else "exact"
            result.append(Case("fanout", f"{kind} {k}", "deliveries/s", k, wildcard))
    for k in sizes.fanout:
        result.append(Case("selective", f"{k}", "msg/s", 1, False, k - 1))
    if broker == "memory":
        result.append(Case("memory", f"{sizes.memory_subscriptions} subscriptions", "bytes/sub"))
    return result


@dataclass
class Record:
    """The results of one contender on one case of one broker."""

    broker: str
    workload: str
    case: str
    family: str
    label: str
    unit: str
    status: str = "ok"  # ok | missing | error | n/a
    reason: str | None = None
    values: list[float] = field(default_factory=list)
    median: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    samples: dict[str, list[float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The record as JSON data."""
        return asdict(self)

    def finish(self) -> None:
        """Compute medians from the rounds (and the status when nothing succeeded)."""
        if self.values:
            self.median = statistics.median(self.values)
        for name, values in self.samples.items():
            if values:
                self.metrics[name] = statistics.median(values)
        if self.status == "ok" and not self.values and self.errors:
            self.status = "error"
            self.reason = self.errors[0]


class TrialError(Exception):
    """A trial that could not finish (timeout, lost messages)."""


# -- trials ---------------------------------------------------------------------------------


async def _deliver(
    contender: Contender,
    plan: Plan,
    messages: int,
    timeout: float,
    publish: Callable[[Any, Sequence[int]], Any],
) -> float:
    """Publish ``messages`` with ``publish(publisher, ids)``; return deliveries per second."""
    sink = Sink()
    expected = messages * plan.subscriptions
    async with contender.session(plan, sink) as publisher:
        await sink.wait_ready(publisher, plan.subscriptions, min(timeout, 30.0))
        done = sink.expect(expected)
        gc.collect()
        start = time.perf_counter()
        try:
            await asyncio.wait_for(publish(publisher, range(messages)), timeout)
        except asyncio.TimeoutError:
            raise TrialError(f"publishing took over {timeout:.0f} s") from None
        return expected / (await _finish(sink, done, start, expected, timeout) - start)


#: Seconds without a single handled message after publishing ends: the rest is lost.
STALL = 5.0


async def _finish(
    sink: Sink, done: asyncio.Future[float], start: float, expected: int, timeout: float
) -> float:
    """When the last message was handled; :class:`Lost` when messages stop arriving."""
    deadline = start + timeout
    count, moved = sink.count, time.perf_counter()
    while not done.done():
        await asyncio.wait([done], timeout=0.2)
        now = time.perf_counter()
        if sink.count != count:
            count, moved = sink.count, now
        elif now - moved > STALL or now > deadline:
            raise Lost(count, expected, count / (moved - start) if moved > start else 0.0)
    return done.result()


class Lost(TrialError):
    """Messages stopped arriving before all were handled (a broker or client dropped them)."""

    def __init__(self, handled: int, expected: int, rate: float) -> None:
        self.fraction = 1 - handled / expected
        super().__init__(
            f"lost {self.fraction:.0%}: {expected - handled} of {expected} messages never "
            f"reached the handler (none arrived for {STALL:.0f} s); the {handled} handled "
            f"came at {rate:,.0f}/s"
        )


async def _sequential(publisher: Any, ids: Sequence[int]) -> None:
    publish = publisher.publish
    for i in ids:
        await publish(i)


def _concurrent(tasks: int) -> Callable[[Any, Sequence[int]], Any]:
    async def publish(publisher: Any, ids: Sequence[int]) -> None:
        chunks = [ids[n::tasks] for n in range(tasks)]
        await asyncio.gather(*(publisher.publish_chunk(chunk) for chunk in chunks if chunk))

    return publish


async def _latency(contender: Contender, plan: Plan, count: int, timeout: float) -> list[float]:
    """``count`` sequential round trips; publish-to-handler times in microseconds."""
    sink = Sink()
    times: list[float] = []
    async with contender.session(plan, sink) as publisher:
        await sink.wait_ready(publisher, 1, min(timeout, 30.0))
        publish = publisher.publish
        gc.collect()
        clock = time.perf_counter
        for i in range(count):
            handled = sink.expect(1)
            start = clock()
            await publish(i)
            try:
                end = await asyncio.wait_for(handled, 10.0)
            except asyncio.TimeoutError:
                raise TrialError(f"message {i} not handled within 10 s") from None
            times.append((end - start) * 1e6)
    return times


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


async def trial(contender: Contender, case: Case, sizes: Sizes) -> dict[str, float]:
    """Run one trial of ``case``; return its value (``value``) and any extra metrics."""
    plan = Plan(contender.broker, _topic(), case.subscriptions, case.wildcard, case.decoys)
    if case.workload == "throughput":
        rate = await _deliver(contender, plan, sizes.messages, sizes.timeout, _sequential)
        return {"value": rate}
    if case.workload == "selective":
        rate = await _deliver(contender, plan, sizes.fanout_deliveries, sizes.timeout, _sequential)
        return {"value": rate}
    if case.workload == "concurrent":
        rate = await _deliver(
            contender, plan, sizes.messages, sizes.timeout, _concurrent(sizes.publishers)
        )
        return {"value": rate}
    if case.workload == "fanout":
        # The same number of deliveries whatever the fan-out, so cases take similar time.
        messages = max(1, sizes.fanout_deliveries // case.subscriptions)
        rate = await _deliver(contender, plan, messages, sizes.timeout, _sequential)
        return {"value": rate, "msg/s": rate / case.subscriptions}
    if case.workload == "latency":
        times = await _latency(contender, plan, sizes.latency, sizes.timeout)
        p99 = _percentile(times, 0.99)
        return {
            "value": p99,
            "p50": _percentile(times, 0.50),
            "p99": p99,
            "max": max(times),
            "mean": statistics.fmean(times),
        }
    if case.workload == "memory":
        return await asyncio.to_thread(_memory_probe, contender.family, sizes.memory_subscriptions)
    raise ValueError(f"unknown workload {case.workload!r}")


def _memory_probe(family: str, count: int) -> dict[str, float]:
    """Resident size added by ``count`` subscriptions, measured in a fresh interpreter."""
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    done = subprocess.run(
        [sys.executable, "-m", "bench.memprobe", family, str(count)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        check=False,
    )
    if done.returncode != 0:
        raise TrialError(f"memory probe failed: {done.stderr.strip()[-500:]}")
    data = json.loads(done.stdout)
    added = data["after"] - data["before"]
    return {"value": added / count, "rss_added": added, "rss_after": data["after"]}


def supports(contender: Contender, case: Case) -> str | None:
    """Why ``contender`` cannot run ``case`` (not applicable), or None."""
    if (case.wildcard or case.decoys) and not contender.wildcards:
        return f"{contender.label} has no wildcard subscriptions"
    if case.workload == "memory" and contender.family not in ("runa", "broadcaster"):
        return "memory footprint is measured on in-process brokers only"
    return None


# -- the run --------------------------------------------------------------------------------


Progress = Callable[[str], None]


async def run(
    contenders: Sequence[Contender],
    sizes: Sizes,
    brokers: Sequence[str],
    progress: Progress = lambda line: None,
    parallel: bool = False,
    workloads: set[str] | None = None,
) -> list[Record]:
    """Run every case on every broker; return one record per contender and case.

    ``parallel`` runs the brokers, and the contenders of each case, at the same time (for
    smoke runs: the numbers then disturb each other and mean nothing).
    """
    jobs = [
        _run_broker(
            [c for c in contenders if c.broker == b], b, sizes, progress, workloads, parallel
        )
        for b in brokers
    ]
    if parallel:
        per_broker = await asyncio.gather(*jobs)
    else:
        per_broker = [await job for job in jobs]
    return [record for records in per_broker for record in records]


async def _run_broker(
    present: Sequence[Contender],
    broker: str,
    sizes: Sizes,
    progress: Progress,
    workloads: set[str] | None = None,
    parallel: bool = False,
) -> list[Record]:
    records: list[Record] = []
    began = time.perf_counter()
    missing = {c: c.missing() for c in present}
    for contender, reason in missing.items():
        if reason:
            progress(f"{broker}: {contender.label} missing: {reason}")
    ready = [c for c in present if not missing[c]]
    for contender in ready:
        if sizes.warmup:
            await _warm(contender, sizes, progress)
    for case in cases(broker, sizes):
        if workloads is not None and case.workload not in workloads:
            continue
        table: dict[Contender, Record] = {}
        for contender in present:
            record = Record(
                broker, case.workload, case.name, contender.family, contender.label, case.unit
            )
            why_not = supports(contender, case)
            if missing[contender]:
                record.status, record.reason = "missing", missing[contender]
            elif why_not:
                record.status, record.reason = "n/a", why_not
            else:
                table[contender] = record
            records.append(record)
        runnable = list(table)
        for round_ in range(sizes.rounds):
            shift = round_ % len(runnable) if runnable else 0
            order = runnable[shift:] + runnable[:shift]
            if parallel:
                await asyncio.gather(
                    *(_one(c, case, sizes, table[c], round_, progress) for c in order)
                )
            else:
                for contender in order:
                    await _one(contender, case, sizes, table[contender], round_, progress)
        for record in table.values():
            record.finish()
    progress(f"{broker}: done in {time.perf_counter() - began:.0f} s")
    return records


async def _one(
    contender: Contender,
    case: Case,
    sizes: Sizes,
    record: Record,
    round_: int,
    progress: Progress,
) -> None:
    """One trial of ``contender`` on ``case``, its result or error added to ``record``."""
    if len(record.errors) >= 2 and not record.values:
        return  # failed twice: do not spend the run on it
    started = time.perf_counter()
    try:
        result = await trial(contender, case, sizes)
    except Exception as exc:
        message = str(exc) if isinstance(exc, TrialError) else f"{type(exc).__name__}: {exc}"
        record.errors.append(message)
        progress(f"{contender.broker} {case.key} {contender.label}: ERROR {message}")
        return
    record.values.append(result.pop("value"))
    for name, value in result.items():
        record.samples.setdefault(name, []).append(value)
    progress(
        f"{contender.broker} {case.key} r{round_ + 1} {contender.label}: "
        f"{record.values[-1]:,.1f} {case.unit} ({time.perf_counter() - started:.1f} s)"
    )


async def _warm(contender: Contender, sizes: Sizes, progress: Progress) -> None:
    """A short unmeasured run, so imports, connections and caches are warm for everyone."""
    plan = Plan(contender.broker, _topic())
    try:
        await _deliver(contender, plan, sizes.warmup, sizes.timeout, _sequential)
    except Exception as exc:
        progress(f"{contender.broker} warm-up {contender.label}: {type(exc).__name__}: {exc}")
