"""Serving benchmark: a moerm cluster against a plain one-model reward server on RL traffic.

Starts, on this machine: a moerm cluster (``moerm up``: router, one expert process,
aggregator, embedded cache), a second cluster whose expert has prefix sharing off, and
the plain baseline server (``bench/plain_rm_server.py``: same backbone plus one scalar
head, bf16, one forward per request, no batching across requests, no prefix sharing).
Then drives them, interleaved and repeated, from N concurrent grpc.aio clients with
three workloads:

- W1: one distinct ~200-token item per request, 32 clients;
- W2: GRPO groups, one ~512-token prompt with 8 responses of ~128 tokens per request,
  32 clients;
- W3: one client sending 32 distinct ~200-token items per request.

Each system sees the same texts in a block; every block has new texts, so nothing is a
cache hit. moerm is measured twice: the full DMoERM (policy ``task``: K experts and the
aggregator) and the single-model path (``fixed`` ``base:<task>``: the task base model).
Also measured: the expert's in-process limit (the scorer called directly on batches like
the ones the service forms, in this process), cache hits through the router (the same
items again), and the expert process's memory in bf16 and float32.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_serving.py            # SmolLM2, K = 5, r = 32, top quarter
    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_serving.py --quick    # a smaller run, to try it

Writes ``bench/results/serving-<backbone>-cpu.{md,json}``. Run it on an idle machine
(check ``uptime``); it takes about half an hour on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402

from moerm.v1 import reward_pb2, reward_pb2_grpc, tensor_pb2  # noqa: E402

CAPABILITIES = ("correctness", "efficiency", "readability", "explanation", "safety")


# -- texts ----------------------------------------------------------------------------


class Texts:
    """Windows of real text of about N tokens (the backbone's tokenizer), from the shared
    preference data when it is there, else from the project's synthetic data."""

    def __init__(self, tokenizer):
        from moerm.data.loaders import missing_shared_files, shared_data_dir

        folder = shared_data_dir()
        if folder is not None and not missing_shared_files(folder):
            from moerm.data.splits import load_shared

            pairs = load_shared(folder).pairs
            self.source = "shared preference data (responses)"
        else:
            from moerm.data.synthetic import synthetic_pairs

            pairs, _ = synthetic_pairs(per_task=64)
            self.source = "synthetic preference data"
        corpus = "\n\n".join(text for p in pairs for text in (p.chosen, p.rejected) if text)
        self.tokenizer = tokenizer
        self.tokens = tokenizer(corpus, add_special_tokens=False)["input_ids"]
        self.cursor = 0

    def take(self, n: int) -> str:
        """The next window of ``n`` tokens that holds some text (not only whitespace)."""
        while True:
            if self.cursor + n > len(self.tokens):
                self.cursor = 0
            window = self.tokens[self.cursor : self.cursor + n]
            self.cursor += n
            text = self.tokenizer.decode(window).strip()
            if len(text.split()) >= n // 4:
                return text


def item(prompt: str, response: str) -> reward_pb2.ScoreItem:
    return reward_pb2.ScoreItem(messages=[tensor_pb2.Message(role="user", content=prompt)], response=response)


@dataclass
class Workload:
    name: str
    description: str
    clients: int
    requests: list[list[reward_pb2.ScoreItem]]

    @property
    def items(self) -> int:
        return sum(map(len, self.requests))


def make_workloads(texts: Texts, block: int, sizes: dict[str, int]) -> list[Workload]:
    tag = f"[block {block}]"
    w1 = [[item(f"{tag} {i}: {texts.take(90)}", texts.take(100))] for i in range(sizes["W1"])]
    w2 = []
    for g in range(sizes["W2"]):
        prompt = f"{tag} group {g}: {texts.take(500)}"
        w2.append([item(prompt, texts.take(128)) for _ in range(8)])
    w3 = [
        [item(f"{tag} {r}.{i}: {texts.take(90)}", texts.take(100)) for i in range(32)]
        for r in range(sizes["W3"])
    ]
    return [
        Workload("W1", "1 distinct ~200-token item per request, 32 clients", 32, w1),
        Workload("W2", "GRPO groups: 1 ~512-token prompt + 8 responses of ~128 tokens, 32 clients", 32, w2),
        Workload("W3", "32 distinct ~200-token items per request, 1 client", 1, w3),
    ]


# -- systems and the driver -----------------------------------------------------------


@dataclass(frozen=True)
class System:
    name: str
    address: str
    policy: str = ""
    reward_model: str = ""


@dataclass
class Run:
    items_per_s: float
    latencies: list[float]
    wall_s: float
    items: int

    def percentile(self, q: float) -> float:
        values = sorted(self.latencies)
        return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


async def drive(system: System, requests: list[list[reward_pb2.ScoreItem]], clients: int) -> Run:
    """Send ``requests`` from ``clients`` concurrent closed-loop clients; one channel each."""
    queue = list(reversed(requests))
    latencies: list[float] = []

    async def client() -> None:
        async with grpc.aio.insecure_channel(
            system.address, options=[("grpc.max_receive_message_length", 64 << 20)]
        ) as channel:
            stub = reward_pb2_grpc.RewardServiceStub(channel)
            while queue:
                items = queue.pop()
                request = reward_pb2.ScoreRequest(
                    items=items, policy=system.policy, reward_model=system.reward_model
                )
                started = time.perf_counter()
                reply = await stub.Score(request, timeout=3600)
                latencies.append(time.perf_counter() - started)
                assert len(reply.results) == len(items)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - started
    n = sum(map(len, requests))
    return Run(n / wall, latencies, wall, n)


# -- processes ------------------------------------------------------------------------


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class PlainServer:
    def __init__(self, backbone: str, log_dir: Path, threads: int, device: str = "cpu"):
        self.port_file = log_dir / "plain.port"
        self.log = (log_dir / "plain.log").open("wb")
        command = [
            sys.executable,
            str(REPO / "bench" / "plain_rm_server.py"),
            "--backbone",
            backbone,
            "--dtype",
            "bfloat16",
            "--port-file",
            str(self.port_file),
            "--threads",
            str(threads),
            "--device",
            device,
        ]
        self.process = subprocess.Popen(
            command, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True, env=dict(os.environ)
        )
        deadline = time.monotonic() + 600
        while not self.port_file.is_file():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"plain server did not start; see {log_dir / 'plain.log'}")
            time.sleep(0.2)
        time.sleep(0.2)
        self.address = f"127.0.0.1:{int(self.port_file.read_text())}"

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()


def expert_rss(cluster) -> float:
    return rss_mib(next(c for c in cluster.children if c.name.startswith("expert-")).process.pid)


def expert_memory(bundle: Path, task: str, dtype: str, items, log_dir: Path, device: str) -> dict[str, float]:
    """RSS of a stand-alone expert in ``dtype``: once loaded, and after scoring ``items``
    (every weight touched; float32 weights are memory-mapped, so they count only once
    read)."""
    from moerm.launcher import wait_serving
    from moerm.v1 import expert_pb2, expert_pb2_grpc

    port_file = log_dir / f"{dtype}.port"
    with (log_dir / f"{dtype}.log").open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "expert_svc", "--bundle", str(bundle), "--task", task, "--dtype", dtype]
            + [
                "--port-file",
                str(port_file),
                "--torch-threads",
                str(os.cpu_count() or 1),
                "--device",
                device,
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 600
        while not port_file.is_file() and time.monotonic() < deadline:
            time.sleep(0.2)
        address = f"127.0.0.1:{int(port_file.read_text())}"
        wait_serving(address, 600)
        loaded = rss_mib(process.pid)
        request = expert_pb2.ExpertRequest(
            task=task, items=[expert_pb2.ExpertItem(messages=i.messages, response=i.response) for i in items]
        )
        with grpc.insecure_channel(address) as channel:
            expert_pb2_grpc.ExpertServiceStub(channel).ScoreBatch(request, timeout=600)
        return {
            f"{dtype} expert, loaded": loaded,
            f"{dtype} expert, after one batch of {len(items)}": rss_mib(process.pid),
        }
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)


def parameter_mib(scorer) -> float:
    return sum(p.numel() * p.element_size() for p in scorer.experts.parameters()) / 2**20


# -- in-process limit -----------------------------------------------------------------


def in_process_worker(bundle_dir: str, task: str, device: str) -> None:
    """``--in-process-worker``: load the scorer, then answer one JSON line per request
    line on stdin (``{"requests": [[[prompt, response], ...], ...], "experts": bool}``
    -> ``{"items_per_s": x}``)."""
    from expert_svc.scorer import ExpertInput, ExpertScorer
    from moerm.bundle import Bundle
    from moerm.memory import keep_freed_memory
    from moerm.text import Turn, normalize

    keep_freed_memory()  # as the expert service does
    scorer = ExpertScorer(Bundle.load(bundle_dir), task, device=device)
    scorer.load()
    print(json.dumps({"dtype": scorer.placement.dtype, "parameter_mib": parameter_mib(scorer)}), flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        experts = job["experts"]
        inputs = [
            [
                ExpertInput((Turn("user", normalize(p)),), normalize(r), experts, not experts)
                for p, r in request
            ]
            for request in job["requests"]
        ]
        batches, current = [], []
        for request in inputs:
            if current and len(current) + len(request) > job["max_batch_size"]:
                batches.append(current)
                current = []
            current = current + request
        if current:
            batches.append(current)
        started = time.perf_counter()
        for batch in batches:
            scorer.score(scorer.prepare(batch))
        print(
            json.dumps({"items_per_s": sum(map(len, inputs)) / (time.perf_counter() - started)}), flush=True
        )


class InProcessLimit:
    """The expert's scorer called directly on batches like the service's (whole
    requests, at most 32 items a batch; tokenizing included, RPC and aggregation not),
    in a process of its own so that nothing of the benchmark's clients runs beside it."""

    def __init__(self, bundle_dir: Path, task: str, device: str, log_dir: Path):
        self.log = (log_dir / "in-process.log").open("wb")
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--in-process-worker", "--bundle", str(bundle_dir), "--task", task]
            + ["--device", device],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        hello = json.loads(self.process.stdout.readline() or "null")
        if hello is None:
            raise RuntimeError(f"the in-process worker did not start; see {log_dir / 'in-process.log'}")
        self.dtype, self.parameter_mib = hello["dtype"], hello["parameter_mib"]

    def rate(self, workload: Workload, *, experts: bool, max_batch_size: int = 32) -> float:
        requests = [[(i.messages[0].content, i.response) for i in r] for r in workload.requests]
        self.process.stdin.write(
            json.dumps({"requests": requests, "experts": experts, "max_batch_size": max_batch_size}) + "\n"
        )
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())["items_per_s"]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()


def embedder_rate(bundle, workload: Workload, repeats: int = 3) -> float:
    """Distinct prompts per second that the router's embedder takes on one core (one
    torch thread, its default dtype), on the prompts of ``workload`` in one batch."""
    import torch

    from moerm.devices import resolve
    from moerm.models.embed import PromptEmbedder
    from moerm.text import Turn, normalize, render_conversation

    spec = bundle.manifest.router
    embedder = PromptEmbedder(spec.embedder, spec.embed_max_tokens, placement=resolve("cpu", "auto"))
    prompts = [
        render_conversation((Turn("user", normalize(r[0].messages[0].content)),)) for r in workload.requests
    ]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        embedder.embed(prompts[:8])
        rates = []
        for _ in range(repeats):
            started = time.perf_counter()
            embedder.embed(prompts)
            rates.append(len(prompts) / (time.perf_counter() - started))
        return statistics.median(rates)
    finally:
        torch.set_num_threads(threads)


# -- the run --------------------------------------------------------------------------


def bench_bundle(backbone: str, r: int, out: Path) -> Path:
    """An untrained bundle with the serving layout: one task, K = 5 experts with LoRA
    rank r on the top quarter, a task base model (speed does not depend on the weights)."""
    from moerm.bundle import Capability
    from moerm.bundle_build import TaskDefinition, create_bundle, with_random_base_models

    if (out / "manifest.json").is_file():
        return out
    plain = out.with_name(out.name + "-plain")
    if not (plain / "manifest.json").is_file():
        task = TaskDefinition("code", "programming", tuple(Capability(c) for c in CAPABILITIES))
        create_bundle(plain, [task], backbone=backbone, lora_r=r, lora_alpha=2 * r, seed=0)
    return with_random_base_models(plain, out)


def machine_line() -> str:
    import peft
    import torch
    import transformers

    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"cpu ({cpu}, {os.cpu_count()} logical cores); torch {torch.__version__}, transformers "
        f"{transformers.__version__}, peft {peft.__version__}; python {platform.python_version()}"
    )


def commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


@dataclass
class Results:
    runs: dict[tuple[str, str], list[Run]] = field(default_factory=dict)
    limits: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    cache: dict[str, list[Run]] = field(default_factory=dict)

    def add(self, workload: str, system: str, run: Run) -> None:
        self.runs.setdefault((workload, system), []).append(run)
        print(
            f"  {workload} {system:<40} {run.items_per_s:8.2f} items/s  p50 {run.percentile(0.5):7.2f}s  "
            f"p99 {run.percentile(0.99):7.2f}s  ({run.items} items, {run.wall_s:.0f}s)",
            file=sys.stderr,
            flush=True,
        )


async def run_blocks(args, texts: Texts, systems: dict[str, list[System]], scorer, results: Results) -> None:
    sizes = {"W1": args.w1_requests, "W2": args.w2_requests, "W3": args.w3_requests}
    for repeat in range(args.repeats):
        workloads = make_workloads(texts, repeat, sizes)
        for workload in workloads:
            if workload.name not in args.workloads:
                continue
            order = systems[workload.name]
            order = order[repeat % len(order) :] + order[: repeat % len(order)]
            for system in order:
                results.add(
                    workload.name, system.name, await drive(system, workload.requests, workload.clients)
                )
            if scorer is not None:
                for experts, label in ((True, "dmoerm experts"), (False, "base model")):
                    rate = scorer.rate(workload, experts=experts)
                    results.limits.setdefault((workload.name, label), []).append(rate)
                    print(f"  {workload.name} in-process limit, {label}: {rate:.2f} items/s", file=sys.stderr)
        # Cache hits: the items of this repeat again, all cached now.
        ran = [w for w in workloads if w.name in ("W1", "W3") and w.name in args.workloads]
        cached = [i for w in ran for r in w.requests for i in r]
        if not cached:
            continue
        main = systems["W1"][0]
        for label, size, clients, count in (
            ("32 clients, 1 item per request", 1, 32, args.cache_requests),
            ("1 client, 32 items per request", 32, 1, args.cache_requests // 8),
            ("32 clients, 32 items per request", 32, 32, args.cache_requests // 4),
        ):
            requests = [[cached[(k * size + j) % len(cached)] for j in range(size)] for k in range(count)]
            run = await drive(main, requests, clients)
            results.cache.setdefault(label, []).append(run)
            print(
                f"  cache hits, {label}: {run.items_per_s:.0f} items/s, p50 {1000 * run.percentile(0.5):.2f} ms",
                file=sys.stderr,
            )


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def render(args, results: Results, meta: dict) -> str:
    lines = [
        f"## serving benchmark: {meta['backbone']}, K = {meta['k']}, LoRA r = {meta['r']} on layers "
        f"{meta['lora_layers']}, expert dtype {meta['dtype']}",
        "",
        f"machine: {meta['machine']}",
        f"run: {meta['date']}; commit {meta['commit']}; {args.repeats} repeats, systems interleaved "
        f"(rotated each repeat); texts: {meta['texts']}; load before start: {meta['load']}",
        "",
    ]
    if meta["failure"]:
        lines += [
            f"**The run stopped before it finished** ({meta['failure']}); the tables hold what it measured.",
            "",
        ]
    for workload in [w for w in ("W1", "W2", "W3") if w in args.workloads]:
        plain = median(
            [r.items_per_s for r in results.runs.get((workload, "plain one-model server (bf16)"), [])]
        )
        lines += [
            f"### {workload}: {meta['workloads'][workload]}",
            "",
            "| system | items/s (median) | items/s per repeat | p50 s | p99 s | x plain | x in-process limit |",
            "|---|---:|---|---:|---:|---:|---:|",
        ]
        for (w, system), runs in results.runs.items():
            if w != workload:
                continue
            rate = median([r.items_per_s for r in runs])
            limit_key = "base model" if "base:" in system else "dmoerm experts"
            limit = median(results.limits.get((workload, limit_key), []))
            share = (
                f"{rate / limit:.2f}"
                if "moerm" in system and "no prefix" not in system and limit == limit
                else ""
            )
            lines.append(
                f"| {system} | {rate:.2f} | {', '.join(f'{r.items_per_s:.2f}' for r in runs)} | "
                f"{median([r.percentile(0.5) for r in runs]):.2f} | {median([r.percentile(0.99) for r in runs]):.2f} | "
                f"{rate / plain:.2f} | {share} |"
            )
        for (w, label), rates in results.limits.items():
            if w == workload:
                lines.append(
                    f"| in-process limit: {label} (scorer alone) | {median(rates):.2f} | {', '.join(f'{x:.2f}' for x in rates)} | | | | |"
                )
        lines.append("")
    lines += [
        "### cache hits through the router",
        "",
        "| traffic | items/s | p50 ms | p99 ms |",
        "|---|---:|---:|---:|",
    ]
    for label, runs in results.cache.items():
        lines.append(
            f"| {label} | {median([r.items_per_s for r in runs]):.0f} | "
            f"{1000 * median([r.percentile(0.5) for r in runs]):.2f} | {1000 * median([r.percentile(0.99) for r in runs]):.2f} |"
        )
    lines += [
        "",
        f"router: its prompt embedder takes {meta['router_embedder']:.0f} distinct W1 prompts/s on one core "
        "(one torch thread, batch of 128, default dtype).",
        "",
        "### memory",
        "",
        "| expert process | MiB |",
        "|---|---:|",
        *(f"| {name} | {value:.0f} |" for name, value in meta["memory"].items()),
        "",
        "items/s: items scored / wall time of the block, clients closed-loop; p50/p99 over the block's requests "
        "(with few requests p99 is close to the maximum). x plain: against the plain server in the same run. "
        "x in-process limit: against the expert's scorer called directly on batches of the same requests "
        "(tokenizing included, RPC and aggregation not). The clients run on the same 2 cores as the servers.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="smollm2")
    parser.add_argument("--bundle", help="bundle to serve (default: an untrained K = 5 bundle, made once)")
    parser.add_argument("--lora-r", type=int, default=32)
    parser.add_argument(
        "--device", default="cpu", help="cpu or cuda[:N], for the experts and the plain server"
    )
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--w1-requests", type=int, default=128)
    parser.add_argument("--w2-requests", type=int, default=32)
    parser.add_argument("--w3-requests", type=int, default=8)
    parser.add_argument("--cache-requests", type=int, default=4096, help="single-item cache-hit requests")
    parser.add_argument("--workloads", default="W1,W2,W3", help="which workloads to run, comma-separated")
    parser.add_argument(
        "--quick", action="store_true", help="fewer requests and one repeat, to try the script"
    )
    parser.add_argument("--no-in-process", action="store_true", help="skip the in-process limit")
    parser.add_argument("--out-dir", default=str(REPO / "bench" / "results"))
    parser.add_argument("--tag", default="")
    parser.add_argument("--task", help=argparse.SUPPRESS)
    parser.add_argument("--in-process-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.in_process_worker:
        in_process_worker(args.bundle, args.task, args.device)
        return
    if args.quick:
        args.repeats, args.w1_requests, args.w2_requests, args.w3_requests, args.cache_requests = (
            1,
            32,
            8,
            2,
            1024,
        )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from moerm.bundle import Bundle
    from moerm.launcher import ProcessCluster
    from moerm.models.backbones import cache_dir

    load = os.getloadavg()[0]
    if load > 0.5:
        print(f"warning: load average {load:.2f}: the machine is not idle", file=sys.stderr)
    bundle_dir = (
        Path(args.bundle)
        if args.bundle
        else bench_bundle(
            args.backbone, args.lora_r, cache_dir() / "bundles" / f"bench-{args.backbone}-k5-r{args.lora_r}"
        )
    )
    bundle = Bundle.load(bundle_dir)
    task = next(iter(bundle.manifest.tasks))
    spec = bundle.manifest.task(task)
    log_dir = Path(tempfile.mkdtemp(prefix="moerm-bench-serving-"))
    threads = os.cpu_count() or 1
    device_args = ["--device", args.device]
    shared = ProcessCluster(
        bundle_dir, log_dir=log_dir / "shared", log_level="WARNING", expert_args=device_args
    )
    whole = ProcessCluster(
        bundle_dir,
        log_dir=log_dir / "whole",
        log_level="WARNING",
        expert_args=[*device_args, "--no-prefix-sharing"],
    )
    plain = scorer = None
    failure = ""
    results = Results()
    memory: dict[str, float] = {}
    try:
        print(f"starting the clusters and the plain server (logs in {log_dir}) ...", file=sys.stderr)
        shared.start()
        whole.start()
        plain = PlainServer(args.backbone, log_dir, threads, args.device)
        memory["bf16 expert of the moerm cluster, loaded"] = expert_rss(shared)
        dmoerm = System("moerm dmoerm (task policy)", shared.address)
        base = System(f"moerm base:{task} (single model)", shared.address, "fixed", f"base:{task}")
        baseline = System("plain one-model server (bf16)", plain.address)
        systems = {
            "W1": [dmoerm, base, baseline],
            "W2": [
                dmoerm,
                base,
                System("moerm dmoerm, no prefix sharing", whole.address),
                System(f"moerm base:{task}, no prefix sharing", whole.address, "fixed", f"base:{task}"),
                baseline,
            ],
            "W3": [dmoerm, base, baseline],
        }
        from transformers import AutoTokenizer

        from moerm.models.backbones import resolve

        texts = Texts(AutoTokenizer.from_pretrained(str(resolve(args.backbone))))
        if not args.no_in_process:
            scorer = InProcessLimit(bundle_dir, task, args.device, log_dir)
            for workload in make_workloads(texts, -1, {"W1": 32, "W2": 4, "W3": 1}):  # warm-up
                for experts in (True, False):
                    scorer.rate(workload, experts=experts)
        try:
            asyncio.run(run_blocks(args, texts, systems, scorer, results))
        except Exception as error:  # keep what was measured; the table says the run stopped
            failure = f"{type(error).__name__}: {error}"
            print(f"the run stopped: {failure}", file=sys.stderr)
        w1 = make_workloads(texts, -3, {"W1": 128, "W2": 0, "W3": 0})[0]
        router_rate = embedder_rate(bundle, w1)
        memory["bf16 expert of the moerm cluster, after the run"] = expert_rss(shared)
        batch = [i for r in make_workloads(texts, -2, {"W1": 0, "W2": 0, "W3": 1})[2].requests for i in r]
        for dtype in ("bfloat16", "float32"):
            memory.update(expert_memory(bundle_dir, task, dtype, batch, log_dir, args.device))
        if scorer is not None:
            memory[f"experts' parameters in {scorer.dtype} (not RSS)"] = scorer.parameter_mib
        dtype = scorer.dtype if scorer is not None else "auto"
    finally:
        if scorer is not None:
            scorer.close()
        if plain is not None:
            plain.stop()
        whole.stop()
        shared.stop()
    meta = {
        "backbone": args.backbone,
        "k": len(spec.capabilities),
        "r": spec.lora.r,
        "lora_layers": f"{min(spec.lora.layers)}-{max(spec.lora.layers)} of {bundle.manifest.backbone.num_layers}",
        "dtype": dtype,
        "machine": machine_line(),
        "commit": commit(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "texts": texts.source,
        "load": f"{load:.2f}",
        "memory": memory,
        "router_embedder": router_rate,
        "failure": failure,
        "workloads": {
            w: d
            for w, d in (
                ("W1", "1 distinct ~200-token item per request, 32 clients"),
                (
                    "W2",
                    "GRPO groups, 1 ~512-token prompt + 8 responses of ~128 tokens per request, 32 clients",
                ),
                ("W3", "32 distinct ~200-token items per request, 1 client"),
            )
        },
    }
    table = render(args, results, meta)
    print(table)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = f"serving-{args.backbone}-{args.device.partition(':')[0]}" + (f"-{args.tag}" if args.tag else "")
    (out / f"{name}.md").write_text(table)
    raw = {
        "meta": meta,
        "args": {k: v for k, v in vars(args).items() if k not in ("out_dir", "bundle")},
        "runs": [
            {
                "workload": w,
                "system": s,
                "items_per_s": r.items_per_s,
                "wall_s": r.wall_s,
                "latencies": r.latencies,
            }
            for (w, s), runs in results.runs.items()
            for r in runs
        ],
        "in_process_limit": [
            {"workload": w, "what": k, "items_per_s": v} for (w, k), vs in results.limits.items() for v in vs
        ],
        "cache_hits": [
            {
                "traffic": label,
                "items_per_s": r.items_per_s,
                "p50_s": r.percentile(0.5),
                "p99_s": r.percentile(0.99),
            }
            for label, runs in results.cache.items()
            for r in runs
        ],
    }
    (out / f"{name}.json").write_text(json.dumps(raw, indent=1))


if __name__ == "__main__":
    main()
