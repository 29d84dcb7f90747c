"""Overload and fault benchmark: what `moerm up` does at twice its saturation and when an
expert dies under load.

On a MiniLM bundle with two tasks (``code``, ``writing``; untrained: speed and behaviour do
not depend on the weights), started with ``moerm up`` (ProcessCluster, supervised):

1. **Saturation**: closed loop, 4 clients sending 8-item requests (fixed policy, the
   ``code`` task's DMoERM) for ``--saturation-s``: items/s = S.
2. **2x saturation**: open loop, 8-item requests arriving at 2 S items/s for
   ``--overload-s`` (Poisson arrivals), each with a 10 s deadline. Every call's status and
   latency: OK, RESOURCE_EXHAUSTED (and how fast), DEADLINE_EXCEEDED, other; goodput (OK
   items/s) against S; the expert's RSS every 10 s. The RSS baseline is taken after
   ``--overload-warmup-s`` (30) at 2 S: the expert keeps freed heap memory by design
   (``moerm.memory``), so its RSS first climbs to the working size of full batches (about
   20% over the first 30 s on the MiniLM bundle); the growth measured after that is what
   sustained overload adds (a leak, or a queue that grows).
3. **Kill under load**: closed loop on both tasks (2 clients each); the ``writing``
   expert is killed with SIGKILL; the calls of each task before, while down and after;
   how fast the failing calls fail; when ``writing`` answers again against its load time.
4. **One of two replicas killed**: a second cluster (``replicas=2``); closed loop on
   ``writing`` (4 clients) for ``--kill-run-s``; one of its two experts is killed; the
   share of calls that succeed.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_overload.py [--quick]

Writes ``bench/results/overload-minilm-cpu.{md,json}``. Run it on an idle machine
(``uptime``); about 7 minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import grpc  # noqa: E402
from bench_serving import commit, machine_line, rss_mib  # noqa: E402

from moerm.v1 import reward_pb2, reward_pb2_grpc  # noqa: E402

ITEMS_PER_REQUEST = 8
DEADLINE_S = 10.0
WORDS = (
    "the a reward model trainer loop function list value error answer poem letter story "
    "because while after before returns prints sorts counts adds checks fixes writes"
).split()


@dataclass
class Call:
    task: str
    started: float
    latency: float
    code: str
    items: int


@dataclass
class Phase:
    calls: list[Call] = field(default_factory=list)

    def codes(self, task: str | None = None) -> Counter:
        return Counter(c.code for c in self.calls if task is None or c.task == task)


def text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def request(rng: random.Random, task: str) -> reward_pb2.ScoreRequest:
    prompt = "Fix this function." if task == "code" else "Write a short poem."
    items = [
        reward_pb2.ScoreItem(prompt=f"{prompt} {text(rng, 60)}", response=text(rng, 120))
        for _ in range(ITEMS_PER_REQUEST)
    ]
    return reward_pb2.ScoreRequest(items=items, policy="fixed", reward_model=f"dmoerm:{task}")


async def one_call(stub, req: reward_pb2.ScoreRequest, task: str, out: list[Call]) -> None:
    started = time.monotonic()
    try:
        await stub.Score(req, timeout=DEADLINE_S)
        code = "OK"
    except grpc.aio.AioRpcError as error:
        code = error.code().name
    out.append(Call(task, started, time.monotonic() - started, code, len(req.items)))


async def closed_loop(stub, tasks: list[str], seconds: float, rng: random.Random, out: list[Call]) -> None:
    end = time.monotonic() + seconds

    async def client(task: str) -> None:
        while time.monotonic() < end:
            await one_call(stub, request(rng, task), task, out)
            if out[-1].code != "OK":
                await asyncio.sleep(0.05)  # a failing task is retried, not hammered

    await asyncio.gather(*(client(task) for task in tasks))


async def open_loop(stub, rate_items: float, seconds: float, rng: random.Random, out: list[Call]) -> None:
    """Poisson arrivals of 8-item requests at ``rate_items`` items/s; waits for every call."""
    end = time.monotonic() + seconds
    pending = []
    while time.monotonic() < end:
        pending.append(asyncio.ensure_future(one_call(stub, request(rng, "code"), "code", out)))
        await asyncio.sleep(rng.expovariate(rate_items / ITEMS_PER_REQUEST))
    await asyncio.gather(*pending)


def goodput(calls: list[Call], seconds: float) -> float:
    return sum(c.items for c in calls if c.code == "OK") / seconds


def quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def make_bundle(out: Path) -> Path:
    from moerm.bundle import Capability
    from moerm.bundle_build import TaskDefinition, create_bundle

    if not (out / "manifest.json").is_file():
        tasks = [
            TaskDefinition("code", "programming", (Capability("correctness"), Capability("readability"))),
            TaskDefinition("writing", "writing", (Capability("fluency"), Capability("relevance"))),
        ]
        create_bundle(out, tasks, backbone="minilm", seed=0)
    return out


async def drive(cluster, args, report: dict) -> None:
    rng = random.Random(0)
    expert = {c.name: c for c in cluster.children}
    async with grpc.aio.insecure_channel(cluster.address) as channel:
        stub = reward_pb2_grpc.RewardServiceStub(channel)
        await closed_loop(stub, ["code"] * 2, 10, rng, [])  # warm up
        saturation = Phase()
        await closed_loop(stub, ["code"] * 4, args.saturation_s, rng, saturation.calls)
        s = goodput(saturation.calls, args.saturation_s)
        print(f"saturation: {s:.1f} items/s ({saturation.codes()})", flush=True)
        await open_loop(stub, 2 * s, args.overload_warmup_s, rng, [])  # the heap reaches its working size

        pid = expert["expert-code"].process.pid
        rss = [rss_mib(pid)]
        overload = Phase()
        started = time.monotonic()
        sampling = asyncio.ensure_future(sample_rss(pid, 10.0, rss))
        await open_loop(stub, 2 * s, args.overload_s, rng, overload.calls)
        span = time.monotonic() - started
        sampling.cancel()
        rss.append(rss_mib(pid))
        rss_before, rss_after = rss[0], rss[-1]
        codes = overload.codes()
        rejected = [c.latency for c in overload.calls if c.code == "RESOURCE_EXHAUSTED"]
        report["overload"] = {
            "saturation_items_per_s": s,
            "offered_items_per_s": 2 * s,
            "seconds": span,
            "calls": len(overload.calls),
            "codes": dict(codes),
            "goodput_items_per_s": goodput(overload.calls, span),
            "goodput_over_saturation": goodput(overload.calls, span) / s,
            "rejected_p50_ms": 1000 * quantile(rejected, 0.5),
            "rejected_p99_ms": 1000 * quantile(rejected, 0.99),
            "ok_p50_s": quantile([c.latency for c in overload.calls if c.code == "OK"], 0.5),
            "ok_p99_s": quantile([c.latency for c in overload.calls if c.code == "OK"], 0.99),
            "expert_rss_mib_before": rss_before,
            "expert_rss_mib_after": rss_after,
            "expert_rss_mib_every_10s": rss,
        }
        print(json.dumps(report["overload"], indent=1), flush=True)

        kill = Phase()
        victim = expert["expert-writing"]
        load_line = "loaded"

        async def killer() -> float:
            await asyncio.sleep(args.kill_after_s)
            os.kill(victim.process.pid, signal.SIGKILL)
            return time.monotonic()

        loop_task = asyncio.ensure_future(
            closed_loop(stub, ["code", "code", "writing", "writing"], args.kill_run_s, rng, kill.calls)
        )
        killed_at = await killer()
        await loop_task
        # The restarted process: launched after the backoff, serving after its start-up
        # (imports and model load), both as wall times from its log's "serving" line.
        launched_wall = time.time() - (time.monotonic() - victim.started_at)
        serving_wall = last_serving_wall(victim.log_file)
        writing = sorted((c for c in kill.calls if c.task == "writing"), key=lambda c: c.started)
        failed = [c for c in writing if c.started >= killed_at and c.code != "OK"]
        back = next((c for c in writing if c.started >= killed_at and c.code == "OK"), None)
        code_after = [c for c in kill.calls if c.task == "code" and c.started >= killed_at]
        report["kill"] = {
            "writing_calls_failed_while_down": len(failed),
            "writing_failure_codes": dict(Counter(c.code for c in failed)),
            "writing_failure_p99_ms": 1000 * quantile([c.latency for c in failed], 0.99),
            "writing_back_after_s": (back.started + back.latency - killed_at) if back else None,
            "writing_expert_load_s": load_seconds(victim.log_file, load_line),
            "writing_restart_backoff_s": launched_wall - (time.time() - (time.monotonic() - killed_at)),
            "writing_startup_s": None if serving_wall is None else serving_wall - launched_wall,
            "code_calls_after_kill": len(code_after),
            "code_calls_ok_after_kill": sum(c.code == "OK" for c in code_after),
            "restarts": cluster.restarts,
        }
        print(json.dumps(report["kill"], indent=1), flush=True)


async def sample_rss(pid: int, every_s: float, out: list[float]) -> None:
    while True:
        await asyncio.sleep(every_s)
        out.append(rss_mib(pid))


async def drive_replicas(cluster, args, report: dict) -> None:
    """Closed loop on ``writing``; one of its two experts is killed under load."""
    rng = random.Random(1)
    victim = next(c for c in cluster.children if c.name == "expert-writing-0")
    async with grpc.aio.insecure_channel(cluster.address) as channel:
        stub = reward_pb2_grpc.RewardServiceStub(channel)
        await closed_loop(stub, ["writing"] * 2, 5, rng, [])  # warm up
        phase = Phase()

        async def killer() -> float:
            await asyncio.sleep(args.kill_after_s)
            os.kill(victim.process.pid, signal.SIGKILL)
            return time.monotonic()

        loop_task = asyncio.ensure_future(
            closed_loop(stub, ["writing"] * 4, args.kill_run_s, rng, phase.calls)
        )
        killed_at = await killer()
        await loop_task
    after = [c for c in phase.calls if c.started >= killed_at - 1.0]  # from just before the kill on
    report["replicas"] = {
        "calls": len(phase.calls),
        "ok": sum(c.code == "OK" for c in phase.calls),
        "codes": dict(phase.codes()),
        "calls_from_kill": len(after),
        "ok_from_kill": sum(c.code == "OK" for c in after),
        "restarts": cluster.restarts,
    }
    print(json.dumps(report["replicas"], indent=1), flush=True)


def last_serving_wall(log_file: Path) -> float | None:
    """Wall time of the log's last "serving" line (the restarted process's)."""
    import datetime
    import re

    found = re.findall(
        r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) INFO moerm.server: serving$",
        log_file.read_text(errors="replace"),
        flags=re.M,
    )
    if not found:
        return None
    stamp, millis = found[-1]
    return datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S").timestamp() + int(millis) / 1000


def load_seconds(log_file: Path, _: str) -> float | None:
    """The restarted expert's model load time, from its log ("... loaded in X.Xs")."""
    import re

    found = re.findall(r"loaded in ([0-9.]+)\s*s", log_file.read_text(errors="replace"))
    return float(found[-1]) if found else None


def fmt(value: float | None) -> str:
    return "?" if value is None else f"{value:.1f}"


def render(report: dict) -> str:
    o, k = report["overload"], report["kill"]
    lines = [
        "## Overload and faults: `moerm up`, MiniLM bundle (2 tasks), 8-item requests",
        "",
        f"{report['machine']}; commit {report['commit']}; load before: {report['load']}",
        "",
        "### Twice saturation (open loop, Poisson arrivals, 10 s deadlines)",
        "",
        "| saturation items/s | offered | calls | OK | RESOURCE_EXHAUSTED | DEADLINE_EXCEEDED | other "
        "| goodput / saturation | rejected p50 / p99 ms | OK p50 / p99 s | expert RSS MiB before / after |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    codes = dict(o["codes"])
    ok, rej, late = (codes.pop(c, 0) for c in ("OK", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"))
    lines.append(
        f"| {o['saturation_items_per_s']:.1f} | {o['offered_items_per_s']:.1f} | {o['calls']} | {ok} | {rej} "
        f"| {late} | {sum(codes.values())} | {o['goodput_over_saturation']:.2f} "
        f"| {o['rejected_p50_ms']:.0f} / {o['rejected_p99_ms']:.0f} | {o['ok_p50_s']:.1f} / {o['ok_p99_s']:.1f} "
        f"| {o['expert_rss_mib_before']:.0f} / {o['expert_rss_mib_after']:.0f} |"
    )
    if "expert_rss_mib_every_10s" in o:
        lines += [
            "",
            "Expert RSS every 10 s (MiB): " + ", ".join(f"{v:.0f}" for v in o["expert_rss_mib_every_10s"]),
        ]
    back = k["writing_back_after_s"]
    lines += [
        "",
        "### The only `writing` expert killed (SIGKILL) under load on both tasks",
        "",
        "| writing calls failed while down | their codes | their p99 ms | writing back after s "
        "| restart backoff s | its start-up s (model load s) | back after, beyond backoff and start-up s "
        "| code calls after the kill (OK) | restarts |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---|",
        f"| {k['writing_calls_failed_while_down']} | {k['writing_failure_codes']} "
        f"| {k['writing_failure_p99_ms']:.0f} | {'never' if back is None else f'{back:.1f}'} "
        f"| {k['writing_restart_backoff_s']:.1f} | {fmt(k['writing_startup_s'])} ({k['writing_expert_load_s']}) "
        f"| {fmt(None if back is None or k['writing_startup_s'] is None else back - k['writing_restart_backoff_s'] - k['writing_startup_s'])} "
        f"| {k['code_calls_after_kill']} ({k['code_calls_ok_after_kill']}) "
        f"| {k['restarts']} |",
    ]
    if "replicas" in report:
        r = report["replicas"]
        lines += [
            "",
            "### One of two `writing` experts killed (SIGKILL) under load (`replicas=2`)",
            "",
            "| calls | OK | share OK | calls from the kill on | OK | codes | restarts |",
            "|---:|---:|---:|---:|---:|---|---|",
            f"| {r['calls']} | {r['ok']} | {r['ok'] / max(1, r['calls']):.4f} | {r['calls_from_kill']} "
            f"| {r['ok_from_kill']} | {r['codes']} | {r['restarts']} |",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saturation-s", type=float, default=30.0)
    parser.add_argument("--overload-s", type=float, default=60.0)
    parser.add_argument("--overload-warmup-s", type=float, default=30.0)
    parser.add_argument("--kill-run-s", type=float, default=40.0)
    parser.add_argument("--kill-after-s", type=float, default=8.0)
    parser.add_argument("--quick", action="store_true", help="short phases, to try the script")
    parser.add_argument("--out-dir", default=str(REPO / "bench" / "results"))
    args = parser.parse_args()
    if args.quick:
        args.saturation_s, args.overload_s, args.kill_run_s, args.kill_after_s = 8, 12, 25, 4
        args.overload_warmup_s = 5
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from moerm.launcher import ProcessCluster
    from moerm.models.backbones import cache_dir

    bundle = make_bundle(cache_dir() / "bundles" / "bench-overload-minilm")
    report = {"machine": machine_line(), "commit": commit(), "load": os.getloadavg()}
    with ProcessCluster(bundle, torch_threads=1, log_level="INFO") as cluster:
        print(f"cluster up (logs in {cluster.log_dir})", flush=True)
        asyncio.run(drive(cluster, args, report))
    with ProcessCluster(bundle, torch_threads=1, log_level="INFO", replicas=2) as cluster:
        print(f"cluster with two replicas per task up (logs in {cluster.log_dir})", flush=True)
        asyncio.run(drive_replicas(cluster, args, report))
    table = render(report)
    print(table)
    if args.quick:
        return
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "overload-minilm-cpu.md").write_text(table)
    (out / "overload-minilm-cpu.json").write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
