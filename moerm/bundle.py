"""The bundle: one directory holding everything a trained moerm system needs.

Layout (all weights are safetensors; no pickle anywhere)::

    manifest.json                      this module's Manifest, with a sha256 per file
    router/classifier.safetensors      weight (T, E), bias (T): prompt embedding -> task
    tasks/<task>/experts/<cap>/        one peft LoRA adapter per capability expert
        adapter_config.json
        adapter_model.safetensors
    tasks/<task>/heads.safetensors     "<cap>.weight" (1, d), "<cap>.bias" (1,)
    tasks/<task>/aggregator.safetensors  the task's MLP (see aggregator_svc)

The backbone itself is referenced, not copied (``backbone.ref``: a packaged
backbone name or a local directory; see :mod:`moerm.models.backbones`).

This module reads and checks manifests and files; it imports no torch so the
router and aggregator can use it. Building bundles lives in
:mod:`moerm.bundle_build`.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.numpy import load_file

from moerm.errors import BundleError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class Capability:
    name: str
    description: str = ""


@dataclass(frozen=True)
class LoraSpec:
    """Where the capability adapters sit. ``layers`` lists the transformer
    layers that carry LoRA; layers below the lowest one are shared by all K
    experts, and the scorer runs them once per batch."""

    r: int
    alpha: int
    target_modules: tuple[str, ...]
    layers: tuple[int, ...]
    dropout: float = 0.0

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> LoraSpec:
        return cls(**{**raw, "target_modules": tuple(raw["target_modules"]), "layers": tuple(raw["layers"])})


@dataclass(frozen=True)
class TaskSpec:
    name: str
    capabilities: tuple[Capability, ...]
    lora: LoraSpec
    aggregator_hidden: int
    # Reward normalization on a reference set: reward = (raw - mean) / std.
    norm_mean: float = 0.0
    norm_std: float = 1.0
    # Phase 1's task base reward model: a task-level LoRA adapter (merged into
    # the backbone at load, so no full backbone copy per task) and its head.
    # None for an untrained bundle.
    base_lora: LoraSpec | None = None
    # The base model's reward normalization (training responses), so that a
    # router mixing base:<task> with other reward models compares like with like.
    base_norm_mean: float = 0.0
    base_norm_std: float = 1.0

    @property
    def capability_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.capabilities)

    def expert_dir(self, cap: str) -> str:
        return f"tasks/{self.name}/experts/{cap}"

    @property
    def heads_file(self) -> str:
        return f"tasks/{self.name}/heads.safetensors"

    @property
    def aggregator_file(self) -> str:
        return f"tasks/{self.name}/aggregator.safetensors"

    @property
    def base_dir(self) -> str:
        """peft adapter of the task base model (only with ``base_lora``)."""
        return f"tasks/{self.name}/base"

    @property
    def base_head_file(self) -> str:
        return f"tasks/{self.name}/base/head.safetensors"


@dataclass(frozen=True)
class BackboneSpec:
    ref: str  # packaged name ("minilm", "smollm2") or a local model directory
    kind: str  # "encoder" or "decoder"
    pooling: str  # "mean" (encoders) or "last" (last non-pad token, decoders)
    hidden_size: int
    num_layers: int
    max_length: int


@dataclass(frozen=True)
class RouterSpec:
    embedder: str  # backbone ref of the prompt embedder
    embed_dim: int
    tasks: tuple[str, ...]  # class order of the classifier
    default_task: str
    # Routes below this confidence go to default_task.
    min_confidence: float = 0.0
    trained: bool = False
    classifier_file: str = "router/classifier.safetensors"
    # Tokens of the prompt the embedder reads (the latest ones) when the classifier was trained.
    embed_max_tokens: int = 256


@dataclass(frozen=True)
class Manifest:
    backbone: BackboneSpec
    router: RouterSpec
    tasks: dict[str, TaskSpec]
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256
    bundle_version: str = ""
    format_version: int = FORMAT_VERSION
    notes: str = ""

    def task(self, name: str) -> TaskSpec:
        try:
            return self.tasks[name]
        except KeyError:
            raise BundleError(f"bundle has no task {name!r} (tasks: {sorted(self.tasks)})") from None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def compute_version(manifest: Manifest | dict[str, Any]) -> str:
    """Content hash of the manifest (minus its version), which lists every file's hash.

    Loading hashes the manifest *as stored* (a dict), so a bundle sealed before
    an optional field was added keeps its version under newer code.
    """
    body = dict(asdict(manifest) if isinstance(manifest, Manifest) else manifest)
    body.pop("bundle_version", None)
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def _parse_manifest(raw: dict[str, Any], source: Path) -> Manifest:
    try:
        if raw["format_version"] != FORMAT_VERSION:
            raise BundleError(
                f"{source}: format_version {raw['format_version']} is not supported "
                f"(this moerm reads {FORMAT_VERSION})"
            )
        backbone = BackboneSpec(**raw["backbone"])
        router_raw = dict(raw["router"])
        router_raw["tasks"] = tuple(router_raw["tasks"])
        router = RouterSpec(**router_raw)
        tasks = {}
        for name, spec in raw["tasks"].items():
            tasks[name] = TaskSpec(
                name=spec["name"],
                capabilities=tuple(Capability(**c) for c in spec["capabilities"]),
                lora=LoraSpec.from_json(spec["lora"]),
                aggregator_hidden=spec["aggregator_hidden"],
                norm_mean=spec.get("norm_mean", 0.0),
                norm_std=spec.get("norm_std", 1.0),
                base_lora=LoraSpec.from_json(spec["base_lora"]) if spec.get("base_lora") else None,
                base_norm_mean=spec.get("base_norm_mean", 0.0),
                base_norm_std=spec.get("base_norm_std", 1.0),
            )
        return Manifest(
            backbone=backbone,
            router=router,
            tasks=tasks,
            files=dict(raw["files"]),
            bundle_version=raw["bundle_version"],
            format_version=raw["format_version"],
            notes=raw.get("notes", ""),
        )
    except BundleError:
        raise
    except (KeyError, TypeError, ValueError) as error:
        raise BundleError(f"{source}: malformed manifest ({type(error).__name__}: {error})") from None


def validate_manifest(manifest: Manifest) -> None:
    """Internal consistency: names, task lists, layer indices, normalization."""
    problems = []
    if not manifest.tasks:
        problems.append("no tasks")
    for name, task in manifest.tasks.items():
        if name != task.name or not _NAME.match(name):
            problems.append(f"bad task name {name!r}")
        caps = task.capability_names
        if not caps:
            problems.append(f"task {name!r} has no capabilities")
        if len(set(caps)) != len(caps) or not all(_NAME.match(c) for c in caps):
            problems.append(f"task {name!r}: capability names must be unique identifiers: {caps}")
        layers = task.lora.layers
        if not layers or any(not 0 <= i < manifest.backbone.num_layers for i in layers):
            problems.append(
                f"task {name!r}: lora layers {layers} outside 0..{manifest.backbone.num_layers - 1}"
            )
        if not task.norm_std > 0:
            problems.append(f"task {name!r}: norm_std must be > 0")
        if not task.base_norm_std > 0:
            problems.append(f"task {name!r}: base_norm_std must be > 0")
    if set(manifest.router.tasks) != set(manifest.tasks):
        problems.append(
            f"router tasks {manifest.router.tasks} differ from bundle tasks {sorted(manifest.tasks)}"
        )
    if manifest.router.default_task not in manifest.tasks:
        problems.append(f"router default_task {manifest.router.default_task!r} is not a task")
    if problems:
        raise BundleError("invalid manifest: " + "; ".join(problems))


def expected_files(manifest: Manifest) -> list[str]:
    files = [manifest.router.classifier_file]
    for task in manifest.tasks.values():
        files += [task.heads_file, task.aggregator_file]
        for cap in task.capability_names:
            files += [
                f"{task.expert_dir(cap)}/adapter_config.json",
                f"{task.expert_dir(cap)}/adapter_model.safetensors",
            ]
        if task.base_lora is not None:
            files += [
                f"{task.base_dir}/adapter_config.json",
                f"{task.base_dir}/adapter_model.safetensors",
                task.base_head_file,
            ]
    return files


@dataclass(frozen=True)
class Bundle:
    root: Path
    manifest: Manifest

    @property
    def version(self) -> str:
        return self.manifest.bundle_version

    def path(self, relative: str) -> Path:
        return self.root / relative

    @classmethod
    def load(cls, root: str | Path, *, verify: bool = True) -> Bundle:
        """Read and check a bundle. Every error names the file at fault.

        With ``verify`` each file's sha256 is checked against the manifest.
        """
        root = Path(root)
        manifest_path = root / MANIFEST
        if not manifest_path.is_file():
            raise BundleError(f"{manifest_path}: bundle manifest not found")
        try:
            raw = json.loads(manifest_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise BundleError(f"{manifest_path}: unreadable manifest ({error})") from None
        manifest = _parse_manifest(raw, manifest_path)
        validate_manifest(manifest)
        for relative in expected_files(manifest):
            if relative not in manifest.files:
                raise BundleError(f"{root / relative}: not listed in the manifest")
        for relative, digest in manifest.files.items():
            path = root / relative
            if not path.is_file():
                raise BundleError(f"{path}: bundle file missing")
            if verify and file_sha256(path) != digest:
                raise BundleError(f"{path}: bundle file corrupt (sha256 differs from manifest)")
        if compute_version(raw) != manifest.bundle_version:
            raise BundleError(f"{manifest_path}: bundle_version does not match its contents")
        return cls(root=root, manifest=manifest)


def seal(root: Path, manifest: Manifest) -> Manifest:
    """Hash every file under ``root`` into the manifest, set its version,
    and write ``manifest.json``."""
    files = {
        str(path.relative_to(root)): file_sha256(path)
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name != MANIFEST
    }
    sealed = Manifest(**{**manifest.__dict__, "files": files, "bundle_version": ""})
    sealed = Manifest(**{**sealed.__dict__, "bundle_version": compute_version(sealed)})
    validate_manifest(sealed)
    (root / MANIFEST).write_text(sealed.to_json() + "\n")
    return sealed


@contextmanager
def staged(out: str | Path) -> Iterator[Path]:
    """A fresh folder beside ``out`` to write a bundle into; renamed to ``out``
    when the block succeeds, removed when it fails (no half-written bundle)."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} already exists")
    out.parent.mkdir(parents=True, exist_ok=True)  # the staging folder must sit on the same filesystem
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        yield staging
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def load_numpy(bundle: Bundle, relative: str) -> dict[str, Any]:
    """Tensors of one safetensors file as numpy arrays (no torch needed)."""

    path = bundle.path(relative)
    try:
        return load_file(str(path))
    except (OSError, SafetensorError) as error:
        raise BundleError(f"{path}: unreadable safetensors file ({error})") from None
