"""The ``moerm`` command line: up, score, demo, bundle, data, label, train, evaluate, deploy.

Each command imports what it needs when it runs (torch, grpc, the services' launcher), so
that building the parser and ``moerm --help`` stay fast."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

from moerm.models.backbones import MINILM, PACKAGED, cache_dir

# Bumped when training changes what a bundle holds (v3: base normalization, router on pair prompts).
DEMO_BUNDLE = "demo-minilm-trained-v3"
DEMO_PAIRS_PER_TASK = 24

DEMO_ITEMS = [
    {
        "id": "code-good",
        "prompt": "Write a Python function that returns the n-th Fibonacci number.",
        "response": "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a",
    },
    {
        "id": "code-bad",
        "prompt": "Write a Python function that returns the n-th Fibonacci number.",
        "response": "Fibonacci numbers are a famous sequence. Good luck!",
    },
    {
        "id": "math-right",
        "prompt": "What is 17 * 24? Show your work.",
        "response": "17 * 24 = 17 * 20 + 17 * 4 = 340 + 68 = 408.",
    },
    {"id": "math-wrong", "prompt": "What is 17 * 24? Show your work.", "response": "17 * 24 = 398."},
    {
        "id": "poem",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Write a two-line poem about autumn rain."},
        ],
        "response": "Cold silver threads on amber leaves,\nthe sky hums softly as it grieves.",
    },
    {
        "id": "harm-refuse",
        "prompt": "How can I break into my neighbour's car without a key?",
        "response": "I can't help with getting into someone else's car. If you're locked out of your own, "
        "a locksmith or your roadside assistance can help.",
    },
    {
        "id": "harm-comply",
        "prompt": "How can I break into my neighbour's car without a key?",
        "response": "Use a slim jim between the window and the seal to pop the lock.",
    },
]


def demo_bundle_dir() -> Path:
    return cache_dir() / "bundles" / DEMO_BUNDLE


def train_demo_bundle(path: Path, *, data_dir: str | None = None) -> Path:
    """Train a small bundle with the DMoERM recipe (MiniLM backbone, a few
    minutes on 2 cores): on a subset of the shared preference data when it is
    there, else on the project's synthetic data."""
    import shutil
    import tempfile

    from moerm.data.loaders import missing_shared_files, shared_data_dir
    from moerm.train import inputs
    from moerm.train.recipe import Recipe
    from moerm.train.settings import RecipeSettings, TrainSettings

    work = Path(tempfile.mkdtemp(prefix="moerm-demo-train-"))
    try:
        folder = Path(data_dir) if data_dir else shared_data_dir()
        if folder is not None and not missing_shared_files(folder):
            prepared = inputs.shared(
                work, data_dir=str(folder), max_pairs_per_task=DEMO_PAIRS_PER_TASK, labels=None
            )
            prepared.inputs.labels = demo_labels(prepared.inputs)
            prepared.inputs.classifier_train = inputs.cap_per_task_examples(
                prepared.inputs.classifier_train, 60
            )
            epochs = 1
        else:
            prepared = inputs.synthetic(per_task=24)
            epochs = 2
        settings = RecipeSettings(
            phase1=TrainSettings(epochs=epochs, lr=1e-3, batch_size=8, max_length=128),
            phase2=TrainSettings(epochs=epochs, lr=1e-3, batch_size=8, max_length=128),
            min_labels=4,
            aggregator_epochs=100,
            router_epochs=200,
        )
        print(
            f"training the demo bundle: {prepared.inputs.description}; {len(prepared.inputs.train)} train "
            f"pairs, {len(prepared.inputs.tasks)} tasks ...",
            file=sys.stderr,
        )
        recipe = Recipe(work, prepared.inputs, settings, progress=False)
        for step in ("router", "phase1", "phase2", "phase3"):
            started = time.perf_counter()
            getattr(recipe, step)()
            print(f"  {step}: {time.perf_counter() - started:.0f}s", file=sys.stderr)
        path.parent.mkdir(parents=True, exist_ok=True)
        recipe.assemble(path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return path


def demo_labels(recipe_inputs) -> list:
    """Capability labels for the demo from the rule-based judges (fast, no model)."""
    from moerm.judges.rules import rule_labels

    pairs = [*recipe_inputs.train, *recipe_inputs.validation]
    labels, stats = rule_labels(pairs, recipe_inputs.capabilities)
    print(f"  rule judges: {len(labels)} capability labels kept", file=sys.stderr)
    return labels


def ensure_demo_bundle(path: Path | None = None) -> Path:
    """The demo bundle, trained on first use (see :func:`train_demo_bundle`)."""
    from moerm.bundle import Bundle
    from moerm.errors import BundleError

    path = path or demo_bundle_dir()
    if (path / "manifest.json").is_file():
        try:
            Bundle.load(path)
            return path
        except BundleError as error:
            print(f"demo bundle at {path} is damaged ({error}); recreating it", file=sys.stderr)
            import shutil

            shutil.rmtree(path)
    return train_demo_bundle(path)


def _wait_for_signal() -> None:
    received = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda number, frame: received.append(number))
    while not received:
        time.sleep(0.2)


def cmd_up(args: argparse.Namespace) -> int:
    from moerm.launcher import ProcessCluster

    bundle = Path(args.bundle) if args.bundle else ensure_demo_bundle()
    cluster = ProcessCluster(
        bundle,
        port=args.port,
        host=args.host,
        redis_url=args.redis_url,
        log_dir=args.log_dir,
        log_level=args.log_level,
        state_dir=args.state_dir or None,
        replicas=args.replicas,
        gateway_port=args.gateway_port,
    )
    print(f"starting moerm from {bundle} (logs in {cluster.log_dir}) ...", file=sys.stderr)
    with cluster:
        print(f"router listening on {cluster.address}", flush=True)
        if cluster.gateway is not None:
            print(f"OpenRLHF reward URL: {cluster.gateway_url}/get_reward", flush=True)
        print("press Ctrl-C to stop", file=sys.stderr, flush=True)
        _wait_for_signal()
        print("stopping ...", file=sys.stderr)
    return 0


def _read_items(source: str) -> list[dict]:
    handle = sys.stdin if source == "-" else open(source, encoding="utf-8")
    with handle:
        items = []
        for number, line in enumerate(handle, 1):
            if line.strip():
                try:
                    items.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise SystemExit(f"{source}:{number}: not JSON ({error})") from None
        return items


def client_options(args: argparse.Namespace) -> dict:
    """RewardClient keywords from ``moerm score``'s connection flags: the token (from
    --token-file or $MOERM_TOKEN, never a flag: command lines are visible to every
    local user) and TLS."""
    from moerm.security import SecurityConfigError, TlsFiles, channel_credentials

    token = os.environ.get("MOERM_TOKEN", "").strip()
    if args.token_file:
        try:
            token = Path(args.token_file).read_text(encoding="utf-8").strip().split()[0]
        except (OSError, IndexError) as error:
            raise SystemExit(f"--token-file {args.token_file}: no token ({error})") from None
    files = TlsFiles(args.tls_cert, args.tls_key, args.tls_ca)
    credentials = None
    if args.tls or files.enabled:
        try:
            files.check("moerm score", server=False)
            credentials = channel_credentials(files)
        except SecurityConfigError as error:
            raise SystemExit(str(error)) from None
    return {"token": token, "credentials": credentials, "server_name": args.tls_server_name}


def cmd_score(args: argparse.Namespace) -> int:
    import grpc

    from moerm.client import RewardClient
    from moerm.errors import field_violations

    items = _read_items(args.file)
    addresses = args.address or ["127.0.0.1:50051"]
    with RewardClient(addresses, timeout_s=args.timeout, **client_options(args)) as client:
        try:
            rewards = client.score(
                items, breakdown=args.breakdown, policy=args.policy, reward_model=args.reward_model
            )
        except grpc.RpcError as error:
            print(f"error: {error.code().name}: {error.details()}", file=sys.stderr)
            for violation in field_violations(error):
                print(f"  {violation.field}: {violation.description}", file=sys.stderr)
            return 1
    for reward in rewards:
        row = {
            "id": reward.id,
            "reward": reward.reward,
            "task": reward.task,
            "route_confidence": reward.route_confidence,
            "reward_models": list(reward.reward_models),
            "cached": reward.cached,
            "bundle_version": reward.bundle_version,
        }
        if args.breakdown:
            row["capabilities"] = reward.capabilities
        print(json.dumps(row))
    return 0


def _print_rewards(rewards) -> None:
    print(f"{'item':<12} {'task':<13} {'conf':>5} {'reward':>8} {'cached':>6}  capabilities")
    for r in rewards:
        caps = "  ".join(f"{name}={value:+.3f}" for name, value in sorted(r.capabilities.items()))
        print(
            f"{r.id:<12} {r.task:<13} {r.route_confidence:>5.2f} {r.reward:>+8.4f} {str(r.cached):>6}  {caps}"
        )


def cmd_demo(args: argparse.Namespace) -> int:
    from moerm.bundle import Bundle
    from moerm.client import RewardClient
    from moerm.launcher import ProcessCluster

    bundle_dir = Path(args.bundle) if args.bundle else ensure_demo_bundle()
    bundle = Bundle.load(bundle_dir)
    tasks = {name: spec.capability_names for name, spec in bundle.manifest.tasks.items()}
    print(f"bundle {bundle.version}: backbone {bundle.manifest.backbone.ref}, tasks {tasks}")
    started = time.perf_counter()
    with ProcessCluster(bundle_dir, log_level="WARNING") as cluster:
        print(
            f"cluster up in {time.perf_counter() - started:.1f}s: router at {cluster.address}, "
            f"{len(tasks)} expert processes, aggregator, embedded cache"
        )
        with RewardClient(cluster.address) as client:
            first = client.score(DEMO_ITEMS, breakdown=True)
            print("\nfirst call (scored by the experts):")
            _print_rewards(first)
            again = client.score(DEMO_ITEMS, breakdown=True)
            print("\nsame call again (answered from the cache):")
            _print_rewards(again)
    if not json.loads(bundle.manifest.notes or "{}").get("trained", True):
        print(
            "\nnote: this bundle is untrained (fresh adapters, zero-shot router): the routes are "
            "meaningful, the rewards are not yet."
        )
    if [r.reward for r in first] != [r.reward for r in again] or not all(r.cached for r in again):
        print("error: the cached rewards differ from the computed ones", file=sys.stderr)
        return 1
    return 0


def _parse_task(text: str):
    from moerm.bundle import Capability
    from moerm.bundle_build import TaskDefinition

    name, sep, caps = text.partition("=")
    if not sep or not caps:
        raise argparse.ArgumentTypeError(
            f"expected NAME=CAP1,CAP2 (optionally NAME=CAP1,CAP2:description), got {text!r}"
        )
    caps, _, description = caps.partition(":")
    return TaskDefinition(
        name.strip(),
        description.strip() or name.strip(),
        tuple(Capability(c.strip()) for c in caps.split(",") if c.strip()),
    )


def cmd_bundle_create(args: argparse.Namespace) -> int:
    from moerm.bundle_build import create_bundle, demo_tasks

    tasks = args.task or demo_tasks()
    bundle = create_bundle(
        args.out,
        tasks,
        backbone=args.backbone,
        lora_r=args.lora_r,
        lora_alpha=args.lora_alpha or 2 * args.lora_r,
        lora_fraction=args.lora_fraction,
        seed=args.seed,
    )
    print(f"bundle {bundle.version} written to {args.out}")
    return 0


def cmd_bundle_show(args: argparse.Namespace) -> int:
    from moerm.bundle import Bundle

    bundle = Bundle.load(args.dir)
    m = bundle.manifest
    print(f"bundle {bundle.version} (format {m.format_version}), {len(m.files)} files verified")
    print(
        f"backbone: {m.backbone.ref} ({m.backbone.kind}, {m.backbone.num_layers} layers, d={m.backbone.hidden_size})"
    )
    print(
        f"router: {m.router.embedder} embeddings -> {list(m.router.tasks)}, default {m.router.default_task!r}, "
        f"{'trained' if m.router.trained else 'zero-shot'}"
    )
    for task in m.tasks.values():
        print(
            f"task {task.name}: {list(task.capability_names)}; LoRA r={task.lora.r} on layers "
            f"{list(task.lora.layers)}"
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moerm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser(
        "up", help="start router, experts, aggregator and cache (and the HTTP gateway) on loopback"
    )
    up.add_argument("--bundle", help="bundle directory (default: the demo bundle, created on first use)")
    up.add_argument("--port", type=int, default=50051, help="router port (0: any free port)")
    up.add_argument("--host", default="127.0.0.1", help="address to bind")
    up.add_argument("--redis-url", default="", help="use this Redis instead of an embedded server")
    up.add_argument(
        "--state-dir",
        default="",
        help="keep the bandit state (embedded state server) in this folder across restarts "
        "(default: in memory, lost when moerm up stops)",
    )
    up.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="expert processes per task; the router spreads calls over them round-robin and retries "
        "a call on another replica when one dies",
    )
    up.add_argument(
        "--gateway-port",
        type=int,
        default=None,
        help="also start the HTTP gateway (OpenRLHF's /get_reward) on this port (0: any free port; "
        "default: no gateway)",
    )
    up.add_argument("--log-dir", help="where the services write their logs (default: a temp folder)")
    up.add_argument("--log-level", default="INFO")
    up.set_defaults(run=cmd_up)

    score = sub.add_parser("score", help="score a JSONL file of items and print one JSON line per item")
    score.add_argument("file", help="JSONL: {prompt | messages, response, id?} per line; - for stdin")
    score.add_argument(
        "--address",
        action="append",
        help="router address (default 127.0.0.1:50051); repeat it for several replicas, used in turn",
    )
    score.add_argument(
        "--token-file", default="", help="file holding the bearer token (default: $MOERM_TOKEN if set)"
    )
    score.add_argument("--tls", action="store_true", help="TLS to the router, trusting the system's CAs")
    score.add_argument("--tls-ca", default="", help="TLS, trusting this PEM CA")
    score.add_argument("--tls-cert", default="", help="PEM client certificate (mutual TLS)")
    score.add_argument("--tls-key", default="", help="PEM key of --tls-cert")
    score.add_argument("--tls-server-name", default="", help="name the router's certificate must carry")
    score.add_argument("--breakdown", action="store_true", help="include per-capability scores")
    score.add_argument("--policy", default="", help="routing policy (default: the router's)")
    score.add_argument("--reward-model", default="", help="reward model for the fixed policy")
    score.add_argument("--timeout", type=float, default=120.0, help="seconds for the whole file")
    score.set_defaults(run=cmd_score)

    demo = sub.add_parser("demo", help="create a bundle, start a cluster, score examples, stop")
    demo.add_argument("--bundle", help="bundle directory (default: the demo bundle)")
    demo.set_defaults(run=cmd_demo)

    bundle = sub.add_parser("bundle", help="create or inspect bundles")
    bundle_sub = bundle.add_subparsers(dest="bundle_command", required=True)
    create = bundle_sub.add_parser(
        "create", help="new bundle with freshly initialized adapters, heads and MLPs"
    )
    create.add_argument("--out", required=True, help="directory to create")
    create.add_argument(
        "--backbone", default=MINILM, help=f"packaged ({', '.join(PACKAGED)}) or a local model dir"
    )
    create.add_argument(
        "--task",
        action="append",
        type=_parse_task,
        help="NAME=CAP1,CAP2[:description], repeatable (default: the demo tasks)",
    )
    create.add_argument("--lora-r", type=int, default=8)
    create.add_argument("--lora-alpha", type=int, default=0, help="default: 2 * r")
    create.add_argument("--lora-fraction", type=float, default=0.25, help="top fraction of layers with LoRA")
    create.add_argument("--seed", type=int, default=0)
    create.set_defaults(run=cmd_bundle_create)
    show = bundle_sub.add_parser("show", help="verify a bundle and print its manifest")
    show.add_argument("dir")
    show.set_defaults(run=cmd_bundle_show)

    from moerm.data.cli import add_data_commands
    from moerm.deploy.cli import add_deploy_commands
    from moerm.evaluate.cli import add_evaluate_commands
    from moerm.evaluate.routing.cli import add_routing_commands
    from moerm.judges.cli import add_label_commands
    from moerm.train.cli import add_train_commands

    add_data_commands(sub)
    add_label_commands(sub)
    add_train_commands(sub)
    add_evaluate_commands(sub)
    add_routing_commands(sub)
    add_deploy_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from moerm.errors import BundleError

    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for reports: the exact command
    try:
        return args.run(args)
    except BundleError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
