"""The init container of every moerm pod: ``python -m moerm.deploy.bundle_check``.

Checks that the bundle at ``--bundle`` is whole (every file's sha256 against
the manifest, unless ``--no-verify``), that its version is the one the
``moerm-bundle`` ConfigMap names (``--expect-version`` or
``MOERM_EXPECT_BUNDLE_VERSION``), and for an expert that it has the task. A pod
whose volume holds another bundle than the one deployed never starts serving:
the init container exits non-zero with a message naming both versions.

With ``--fetch URL`` it first fetches the bundle as a ``.tar.gz`` (http, https
or file URL; files at the archive's root or under one folder) into
``--bundle``, which is then an emptyDir the service mounts read-only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tarfile
import urllib.request
from pathlib import Path

from moerm.bundle import MANIFEST, Bundle
from moerm.errors import BundleError

ENV_VERSION = "MOERM_EXPECT_BUNDLE_VERSION"


def fetch(url: str, target: Path, *, timeout_s: float = 600.0) -> None:
    """Stream the archive at ``url`` into ``target`` (emptied first)."""
    target.mkdir(parents=True, exist_ok=True)
    for entry in target.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 (the operator's URL)
        with tarfile.open(fileobj=response, mode="r|*") as archive:
            archive.extractall(target, filter="data")
    if not (target / MANIFEST).is_file():
        inner = [entry for entry in target.iterdir() if entry.is_dir()]
        if len(inner) == 1 and (inner[0] / MANIFEST).is_file():
            for entry in list(inner[0].iterdir()):
                entry.rename(target / entry.name)
            inner[0].rmdir()


def _current_version(root: Path) -> str:
    try:
        return Bundle.load(root, verify=False).version
    except BundleError:
        return ""


def check(root: Path, expected: str, task: str = "", *, verify: bool = True) -> Bundle:
    bundle = Bundle.load(root, verify=verify)
    if expected and bundle.version != expected:
        raise BundleError(
            f"{root}: bundle version {bundle.version}, but the deployment expects {expected} "
            f"(update the volume, or the moerm-bundle ConfigMap by rendering for this bundle)"
        )
    if task:
        bundle.manifest.task(task)
    return bundle


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m moerm.deploy.bundle_check", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--bundle", required=True, help="bundle directory")
    parser.add_argument(
        "--expect-version",
        default=os.environ.get(ENV_VERSION, ""),
        help=f"required version [env {ENV_VERSION}]",
    )
    parser.add_argument("--task", default="", help="an expert's task, which the bundle must have")
    parser.add_argument("--fetch", default="", help="first fetch a .tar.gz of the bundle from this URL")
    parser.add_argument("--no-verify", action="store_true", help="skip the sha256 of every file")
    args = parser.parse_args(argv)
    root = Path(args.bundle)
    try:
        if args.fetch:
            have = _current_version(root)
            if have and have == args.expect_version:
                print(f"bundle {have} already at {root}", flush=True)
            else:
                print(f"fetching the bundle into {root} ...", flush=True)
                fetch(args.fetch, root)
        bundle = check(root, args.expect_version, args.task, verify=not args.no_verify)
    except BundleError as error:
        print(f"bundle check failed: {error}", file=sys.stderr)
        return 1
    except (OSError, tarfile.TarError) as error:
        print(f"bundle fetch failed: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    print(f"bundle {bundle.version} at {root}: tasks {sorted(bundle.manifest.tasks)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
