"""The benchmark harness runs end to end at tiny sizes, so it never rots.

No assertion here is about speed: the smoke run only proves that every contender and
every workload still runs and lands in the JSON report (``python -m bench --smoke``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

NETWORK = ("redis", "nats", "amqp", "mqtt")
FAMILIES = {
    "memory": {"runa", "broadcaster"},
    **{b: {"runa", "faststream", "raw"} for b in NETWORK},
}
WORKLOADS = {"throughput", "concurrent", "latency", "fanout", "selective"}


@pytest.mark.broker
@pytest.mark.timeout(180)
def test_smoke_run_reports_every_contender_and_workload(tmp_path: Path) -> None:
    out = tmp_path / "smoke.json"
    chart = tmp_path / "smoke.png"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--smoke",
            "--quiet",
            "--out",
            str(out),
            "--chart",
            str(chart),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    report = json.loads(out.read_text())
    assert chart.stat().st_size > 10_000

    seen: dict[tuple[str, str], set[str]] = {}
    for record in report["records"]:
        seen.setdefault((record["broker"], record["family"]), set()).add(record["workload"])
        assert record["status"] in ("ok", "missing", "n/a", "error"), record
        if record["status"] == "ok":
            assert record["median"] is not None, record
            assert record["median"] > 0, record
        if record["family"] == "runa":
            # runa's own drivers never fail; in CI they must not be missing either.
            assert record["status"] != "error", record
            if os.environ.get("CI"):
                assert record["status"] != "missing", record

    for broker, families in FAMILIES.items():
        for family in families:
            expected = WORKLOADS | ({"memory"} if broker == "memory" else set())
            assert seen.get((broker, family)) == expected, (broker, family)

    latency = [r for r in report["records"] if r["workload"] == "latency" and r["status"] == "ok"]
    assert all({"p50", "p99", "max"} <= set(r["metrics"]) for r in latency)
    assert report["meta"]["environment"]["versions"]["runa-message-core"]
    assert {c["broker"] for c in report["contenders"]} == set(FAMILIES)
