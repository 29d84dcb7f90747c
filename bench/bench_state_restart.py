"""Restart time and memory of the bandit state, with and without log compaction.

A router rebuilds its bandits at start-up from the store: without compaction it replays
every feedback event ever logged; with compaction it loads the last snapshot and replays
the events after it (fewer than ``--compact-every``). This script measures both, on a
private state server (``EmbeddedRedis.for_state``: noeviction, in memory):

- **compacted**: a writer replica logs events in pages of 1,000 (the same store calls
  and event bytes as Feedback; random unit contexts of dim 384, 4 arms, random rewards)
  and compacts as Feedback does. At each checkpoint (100,000 and 1,000,000 events, right
  after a compaction) and again ``--compact-every`` minus one page later (the longest
  replay: just before the next compaction), a new replica starts and syncs: its wall time
  is the restart time; its bandits must equal the writer's bitwise.
- **full log**: the same events logged with compaction off; at each checkpoint a new
  replica replays the whole log.

Redis memory is the server's ``used_memory`` with only that namespace in it: the log's
list and the snapshot, and one ``done`` marker per event (they expire after
``--decision-ttl-s``, a day by default, so they grow with a day's traffic, not forever).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_state_restart.py [--quick]

Writes ``bench/results/state-restart-cpu.{md,json}``. Run it on an idle machine
(``uptime``): the replays are single-core numpy; about 25 minutes, most of it the full
log's replay of 1,000,000 events (skip it with ``--full-max 100000``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from moerm.embedded_redis import EmbeddedRedis  # noqa: E402
from moerm.routing.state import RoutingState  # noqa: E402
from moerm.routing.store import BanditStore  # noqa: E402

ARMS = ("dmoerm:code", "base:code", "dmoerm:writing", "ext:judge")
DIM = 384
PAGE = 1000


def events(rng: np.random.Generator, start: int) -> list[tuple[str, str, np.ndarray, float]]:
    X = rng.standard_normal((PAGE, DIM)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    arms = rng.integers(0, len(ARMS), PAGE)
    rewards = rng.uniform(0, 1, PAGE)
    return [
        (f"req:{start + i}", ARMS[k], x, float(r))
        for i, (k, x, r) in enumerate(zip(arms, X, rewards, strict=True))
    ]


async def used_memory_mib(client) -> float:
    return int((await client.info("memory"))["used_memory"]) / 2**20


async def restart(client, namespace: str) -> dict:
    """A new replica syncs from the store; wall seconds and what it loaded."""
    replica = RoutingState(ARMS, DIM, BanditStore(client, namespace=namespace), compact_every=0)
    started = time.perf_counter()
    await replica.sync()
    seconds = time.perf_counter() - started
    # Events read from the list, not loaded with the snapshot.
    return {"seconds": seconds, "replayed": replica.offset - replica.base, "replica": replica}


async def run(kind: str, url: str, checkpoints: list[int], compact_every: int) -> list[dict]:
    import redis.asyncio as redis

    client = redis.Redis.from_url(url, socket_timeout=60)
    namespace = f"bench-{kind}:"
    store = BanditStore(client, namespace=namespace)
    writer = RoutingState(ARMS, DIM, store, compact_every=compact_every)
    rng = np.random.default_rng(0)
    rows = []
    logged = 0
    started = time.perf_counter()
    for checkpoint in checkpoints:
        while logged < checkpoint:
            await store.append_feedback(events(rng, logged))
            logged += PAGE
            if compact_every:
                await writer.compact()  # what the end of Feedback does (sync, then compact when due)
        fill_s = time.perf_counter() - started
        memory = await used_memory_mib(client)
        result = await restart(client, namespace)
        replica = result.pop("replica")
        if compact_every:
            same = all(
                np.array_equal(a, b)
                for name in writer.bandits
                for a, b in zip(
                    writer.bandits[name].state().values(), replica.bandits[name].state().values(), strict=True
                )
            )
        else:
            same = None
        rows.append(
            {
                "kind": kind,
                "events": logged,
                "compact_every": compact_every,
                "restart_s": result["seconds"],
                "replayed": result["replayed"],
                "log_list": int(await client.llen(store.log_key)),
                "snapshot_mib": len(await store.snapshot() or b"") / 2**20,
                "redis_mib": memory,
                "equal_to_writer": same,
                "fill_s": fill_s,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    await client.flushall()
    await client.aclose()
    return rows


def render(report: dict) -> str:
    lines = [
        "## Bandit state: restart time and memory, with and without log compaction",
        "",
        f"{report['machine']}; commit {report['commit']}; load before: {report['load']}",
        "",
        f"{len(ARMS)} arms, dim {DIM} (LinUCB and Thompson), events logged in pages of {PAGE:,}; "
        "restart = a new replica's `sync()` from the store (one core, numpy).",
        "",
        "| log | events | restart s | events replayed | events in the list | snapshot MiB "
        "| Redis used MiB | restarted == writer |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in report["rows"]:
        kind = (
            f"compacted every {row['compact_every']:,}"
            if row["compact_every"]
            else "full log (no compaction)"
        )
        same = "" if row["equal_to_writer"] is None else ("bitwise" if row["equal_to_writer"] else "NO")
        lines.append(
            f"| {kind} | {row['events']:,} | {row['restart_s']:.2f} | {row['replayed']:,} | "
            f"{row['log_list']:,} | {row['snapshot_mib']:.1f} | {row['redis_mib']:.0f} | {same} |"
        )
    return "\n".join(lines) + "\n"


def machine_line() -> str:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return f"{cpu}, {os.cpu_count()} logical cores; numpy {np.__version__}; python {sys.version.split()[0]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compact-every", type=int, default=10_000)
    parser.add_argument("--checkpoints", default="100000,1000000")
    parser.add_argument("--full-max", type=int, default=1_000_000, help="largest full-log replay to time")
    parser.add_argument("--quick", action="store_true", help="small checkpoints, to try the script")
    parser.add_argument("--out-dir", default=str(REPO / "bench" / "results"))
    args = parser.parse_args()
    checkpoints = [int(c) for c in args.checkpoints.split(",")]
    if args.quick:
        checkpoints, args.compact_every, args.full_max = [6000, 21000], 3000, 21000
    import subprocess

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    report = {"machine": machine_line(), "commit": commit, "load": os.getloadavg(), "rows": []}
    with EmbeddedRedis.for_state() as server:
        worst = sorted({c for n in checkpoints for c in (n, n + args.compact_every - PAGE)})
        report["rows"] += asyncio.run(run("compacted", server.url, worst, args.compact_every))
        full = [c for c in checkpoints if c <= args.full_max]
        report["rows"] += asyncio.run(run("full", server.url, full, 0))
    table = render(report)
    print(table)
    if args.quick:
        return
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "state-restart-cpu.md").write_text(table)
    (out / "state-restart-cpu.json").write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
