"""``moerm deploy render | apply | status``.

:func:`add_deploy_commands` adds ``deploy`` to the ``moerm`` parser's
subparsers; each command sets ``run`` (returns the exit code) like the rest of
:mod:`moerm.cli`. The ``kubernetes`` package (extra ``deploy``) is imported
only when a command runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def _parse_set(text: str) -> dict[str, Any]:
    """``a.b.c=VALUE`` -> {"a": {"b": {"c": VALUE}}}, VALUE read as YAML."""
    import yaml

    path, sep, raw = text.partition("=")
    if not sep or not path:
        raise argparse.ArgumentTypeError(f"expected KEY.PATH=VALUE, got {text!r}")
    value: Any = yaml.safe_load(raw) if raw else ""
    for key in reversed(path.split(".")):
        value = {key: value}
    return value


def load(args: argparse.Namespace):
    """(bundle info, values) from the render options."""
    from moerm.deploy.render import BundleInfo
    from moerm.deploy.values import load_values, merge

    overrides: dict[str, Any] = {}
    for item in args.set or []:
        overrides = merge(overrides, item)
    if args.namespace:
        overrides = merge(overrides, {"namespace": args.namespace})
    values = load_values(args.overlay, tuple(args.values or ()), overrides)
    return BundleInfo.from_bundle(args.bundle, verify=not args.no_verify), values


def documents(args: argparse.Namespace) -> list[dict[str, Any]]:
    from moerm.deploy.render import render, to_dicts

    info, values = load(args)
    return to_dicts(render(info, values))


def cmd_render(args: argparse.Namespace) -> int:
    from moerm.deploy.render import dump_yaml, write
    from moerm.deploy.values import ValuesError

    try:
        docs = documents(args)
    except ValuesError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.out in ("", "-"):
        if args.layout != "single":
            print("error: --layout kustomize needs --out DIR", file=sys.stderr)
            return 2
        sys.stdout.write(dump_yaml(docs))
        return 0
    written = write(docs, Path(args.out), args.layout)
    print(f"{len(docs)} objects written to {args.out} ({len(written)} files)", file=sys.stderr)
    return 0


def _read_manifests(path: str) -> list[dict[str, Any]]:
    import yaml

    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    return [doc for doc in yaml.safe_load_all(text) if doc]


def cmd_apply(args: argparse.Namespace) -> int:
    from kubernetes.dynamic import DynamicClient

    from moerm.deploy.cluster import DeployError, api_client, apply
    from moerm.deploy.values import ValuesError

    if bool(args.manifests) == bool(args.bundle):
        print("error: give either --bundle or --manifests", file=sys.stderr)
        return 2
    try:
        docs = _read_manifests(args.manifests) if args.manifests else documents(args)
    except ValuesError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    dynamic = DynamicClient(api_client(args.kubeconfig, args.context))
    try:
        apply(docs, dynamic, dry_run=args.dry_run)
    except DeployError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    import time

    from kubernetes import client

    from moerm.deploy.cluster import api_client, collect, format_status

    api = api_client(args.kubeconfig, args.context)
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    while True:
        version, rows = collect(apps, core, args.namespace, prometheus=args.prometheus)
        print(format_status(args.namespace, version, rows), flush=True)
        if not args.watch:
            return 0
        time.sleep(args.watch)
        print()


def _render_options(parser: argparse.ArgumentParser, *, bundle_required: bool = True) -> None:
    parser.add_argument("--bundle", required=bundle_required, help="bundle directory (its manifest is read)")
    parser.add_argument("--overlay", default="cpu", choices=("cpu", "gpu"), help="profile of the values")
    parser.add_argument(
        "--values", action="append", help="values file (YAML, see deploy/values.example.yaml); repeatable"
    )
    parser.add_argument(
        "--set",
        action="append",
        type=_parse_set,
        metavar="KEY.PATH=VALUE",
        help="one value over the files, e.g. experts.tasks.code.minReplicas=2; repeatable",
    )
    parser.add_argument("--namespace", default="", help="namespace (default: the values' namespace)")
    parser.add_argument("--no-verify", action="store_true", help="do not hash the bundle's files")


def _cluster_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--kubeconfig", default=None, help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)"
    )
    parser.add_argument("--context", default=None, help="kubeconfig context")


def add_deploy_commands(sub) -> None:
    deploy = sub.add_parser("deploy", help="Kubernetes manifests for a bundle: render, apply, status")
    deploy_sub = deploy.add_subparsers(dest="deploy_command", required=True)

    render = deploy_sub.add_parser("render", help="write the manifests of a bundle (YAML)")
    _render_options(render)
    render.add_argument("--out", default="-", help="file, or folder with --layout kustomize (- = stdout)")
    render.add_argument(
        "--layout", default="single", choices=("single", "kustomize"), help="one file, or a kustomize folder"
    )
    render.set_defaults(run=cmd_render)

    apply = deploy_sub.add_parser("apply", help="server-side apply the manifests of a bundle to a cluster")
    _render_options(apply, bundle_required=False)
    apply.add_argument(
        "--manifests", default="", help="apply this rendered file (- = stdin) instead of --bundle"
    )
    apply.add_argument("--dry-run", action="store_true", help="server-side dry run: validate, change nothing")
    _cluster_options(apply)
    apply.set_defaults(run=cmd_apply)

    status = deploy_sub.add_parser("status", help="replicas, ready replicas and queue depth per task")
    status.add_argument("--namespace", default="moerm")
    status.add_argument(
        "--prometheus", default="", help="Prometheus URL for the queue depth (default: pod metrics)"
    )
    status.add_argument("--watch", type=float, default=0.0, metavar="SECONDS", help="repeat every SECONDS")
    _cluster_options(status)
    status.set_defaults(run=cmd_status)
