"""Bundle format: create/load round trip, versioning, integrity checks that name
the file at fault, manifest validation, and the experts' heads."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from moerm.bundle import (
    MANIFEST,
    Bundle,
    _parse_manifest,
    compute_version,
    expected_files,
    seal,
    validate_manifest,
)
from moerm.errors import BundleError
from tests.conftest import BUNDLE_TASKS

CODE_CAPS = BUNDLE_TASKS["code"][1]
HEADS = "tasks/code/heads.safetensors"
ADAPTER = "tasks/code/experts/efficiency/adapter_model.safetensors"
TEXTS = ["def add(a, b):\n    return a + b", "Write a haiku about the sea.\nassistant: Waves fold into foam."]


@pytest.fixture
def bundle_copy(minilm_bundle: Path, tmp_path: Path) -> Path:
    """A private copy of the session bundle, free to damage."""
    return Path(shutil.copytree(minilm_bundle, tmp_path / "bundle"))


def _edit_manifest(root: Path, edit) -> None:
    raw = json.loads((root / MANIFEST).read_text())
    edit(raw)
    (root / MANIFEST).write_text(json.dumps(raw))


def _flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    for i in range(middle, middle + 8):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


# -- round trip and version ---------------------------------------------------------


def test_create_load_round_trip(minilm_bundle: Path) -> None:
    bundle = Bundle.load(minilm_bundle)
    manifest = bundle.manifest
    assert manifest.backbone.ref == "minilm"
    assert (manifest.backbone.kind, manifest.backbone.pooling) == ("encoder", "mean")
    assert (manifest.backbone.hidden_size, manifest.backbone.num_layers) == (384, 6)
    assert set(manifest.tasks) == set(BUNDLE_TASKS)
    for name, (_, caps) in BUNDLE_TASKS.items():
        assert manifest.task(name).capability_names == caps
    assert manifest.router.tasks == tuple(BUNDLE_TASKS)
    assert manifest.router.default_task == "code"
    assert sorted(manifest.files) == sorted(expected_files(manifest))
    assert all((minilm_bundle / rel).is_file() for rel in manifest.files)
    # The JSON form parses back to the same manifest.
    assert _parse_manifest(json.loads(manifest.to_json()), minilm_bundle / MANIFEST) == manifest
    with pytest.raises(BundleError, match="no task 'exam'"):
        manifest.task("exam")


def test_bundle_version_is_stable(minilm_bundle: Path, bundle_copy: Path) -> None:
    first, second = Bundle.load(minilm_bundle), Bundle.load(minilm_bundle)
    assert len(first.version) == 16
    assert first.version == second.version == compute_version(first.manifest)
    # Sealing unchanged files again gives the same version and manifest bytes.
    before = (bundle_copy / MANIFEST).read_bytes()
    resealed = seal(bundle_copy, first.manifest)
    assert resealed.bundle_version == first.version
    assert (bundle_copy / MANIFEST).read_bytes() == before


def test_a_bundle_sealed_before_an_optional_field_existed_still_loads(bundle_copy: Path) -> None:
    """The version is the hash of the manifest as stored: a field added later
    (with a default) does not change an older bundle's version."""
    raw = json.loads((bundle_copy / MANIFEST).read_text())
    for task in raw["tasks"].values():
        del task["base_norm_mean"], task["base_norm_std"]  # as sealed by an older moerm
    raw["bundle_version"] = compute_version(raw)
    (bundle_copy / MANIFEST).write_text(json.dumps(raw, indent=2, sort_keys=True))
    loaded = Bundle.load(bundle_copy)
    assert loaded.version == raw["bundle_version"]
    assert all(spec.base_norm_std == 1.0 for spec in loaded.manifest.tasks.values())


@pytest.mark.parametrize("relative", [HEADS, "tasks/writing/experts/fluency/adapter_config.json"])
def test_bundle_version_changes_when_a_file_changes(
    minilm_bundle: Path, bundle_copy: Path, relative: str
) -> None:
    original = Bundle.load(minilm_bundle)
    path = bundle_copy / relative
    if path.suffix == ".json":
        path.write_text(json.dumps(json.loads(path.read_text()), indent=4))
    else:
        from safetensors.numpy import load_file, save_file

        tensors = load_file(str(path))
        tensors["correctness.bias"] = tensors["correctness.bias"] + 1.0
        save_file(tensors, str(path))
    # Without re-sealing, the changed file is caught ...
    with pytest.raises(BundleError, match="corrupt"):
        Bundle.load(bundle_copy)
    # ... and re-sealed, it is a new version.
    resealed = seal(bundle_copy, original.manifest)
    assert resealed.bundle_version != original.version
    assert resealed.files[relative] != original.manifest.files[relative]
    assert Bundle.load(bundle_copy).version == resealed.bundle_version


# -- integrity ------------------------------------------------------------------------


@pytest.mark.parametrize("relative", [ADAPTER, HEADS])
def test_corrupt_file_is_named(bundle_copy: Path, relative: str) -> None:
    _flip_bytes(bundle_copy / relative)
    with pytest.raises(BundleError, match="corrupt") as caught:
        Bundle.load(bundle_copy)
    assert str(bundle_copy / relative) in str(caught.value)
    # Without verification the damage goes unnoticed at load time.
    assert Bundle.load(bundle_copy, verify=False).version


def test_missing_file_is_named(bundle_copy: Path) -> None:
    relative = "tasks/writing/experts/fluency/adapter_config.json"
    (bundle_copy / relative).unlink()
    with pytest.raises(BundleError, match="missing") as caught:
        Bundle.load(bundle_copy)
    assert str(bundle_copy / relative) in str(caught.value)


def test_unlisted_file_is_named(bundle_copy: Path) -> None:
    _edit_manifest(bundle_copy, lambda raw: raw["files"].pop(HEADS))
    with pytest.raises(BundleError, match="not listed in the manifest") as caught:
        Bundle.load(bundle_copy)
    assert str(bundle_copy / HEADS) in str(caught.value)


def test_edited_manifest_fails_the_version_check(bundle_copy: Path) -> None:
    _edit_manifest(bundle_copy, lambda raw: raw.update(notes="edited by hand"))
    with pytest.raises(BundleError, match="bundle_version does not match"):
        Bundle.load(bundle_copy)


def test_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="manifest not found") as caught:
        Bundle.load(tmp_path)
    assert str(tmp_path / MANIFEST) in str(caught.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "unreadable manifest"),
        ('{"format_version": 1}', "malformed manifest"),
        ("[1, 2, 3]", "malformed manifest"),
    ],
)
def test_malformed_manifest(bundle_copy: Path, content: str, message: str) -> None:
    (bundle_copy / MANIFEST).write_text(content)
    with pytest.raises(BundleError, match=message) as caught:
        Bundle.load(bundle_copy)
    assert str(bundle_copy / MANIFEST) in str(caught.value)


def test_malformed_task_entry(bundle_copy: Path) -> None:
    _edit_manifest(bundle_copy, lambda raw: raw["tasks"]["code"]["lora"].pop("r"))
    with pytest.raises(BundleError, match="malformed manifest"):
        Bundle.load(bundle_copy)


def test_unsupported_format_version(bundle_copy: Path) -> None:
    _edit_manifest(bundle_copy, lambda raw: raw.update(format_version=99))
    with pytest.raises(BundleError, match="format_version 99 is not supported"):
        Bundle.load(bundle_copy)


# -- manifest validation ------------------------------------------------------------


@pytest.mark.parametrize("layers", [[6], [-1], [4, 5, 6], []])
def test_bad_lora_layer_index(bundle_copy: Path, layers: list[int]) -> None:
    def edit(raw):
        raw["tasks"]["code"]["lora"]["layers"] = layers

    _edit_manifest(bundle_copy, edit)
    with pytest.raises(BundleError, match=r"task 'code': lora layers .* outside 0\.\.5"):
        Bundle.load(bundle_copy)


def test_default_task_must_be_a_task(minilm_bundle: Path, bundle_copy: Path) -> None:
    manifest = Bundle.load(minilm_bundle).manifest
    bad = dataclasses.replace(manifest, router=dataclasses.replace(manifest.router, default_task="exam"))
    with pytest.raises(BundleError, match="default_task 'exam' is not a task"):
        validate_manifest(bad)

    def edit(raw):
        raw["router"]["default_task"] = "exam"

    _edit_manifest(bundle_copy, edit)
    with pytest.raises(BundleError, match="default_task 'exam' is not a task"):
        Bundle.load(bundle_copy)


def test_manifest_validation_other_rules(minilm_bundle: Path) -> None:
    manifest = Bundle.load(minilm_bundle).manifest
    validate_manifest(manifest)  # the good one passes
    code = manifest.tasks["code"]
    cases = {
        "norm_std must be > 0": {"code": dataclasses.replace(code, norm_std=0.0)},
        "capability names must be unique": {
            "code": dataclasses.replace(code, capabilities=code.capabilities[:1] * 2)
        },
        "has no capabilities": {"code": dataclasses.replace(code, capabilities=())},
        "router tasks": {"code": code},
    }
    for message, tasks in cases.items():
        with pytest.raises(BundleError, match=message):
            validate_manifest(dataclasses.replace(manifest, tasks=tasks))


# -- experts and their heads --------------------------------------------------------


@pytest.fixture(scope="module")
def code_experts(minilm_bundle: Path):
    from moerm.models.loading import load_task_experts

    return load_task_experts(Bundle.load(minilm_bundle), "code")


def _encode(tokenizer):
    tokenizer.padding_side = "right"
    return tokenizer(TEXTS, padding=True, return_tensors="pt")


def test_heads_file_holds_one_head_per_capability(minilm_bundle: Path) -> None:
    from safetensors.numpy import load_file

    tensors = load_file(str(minilm_bundle / HEADS))
    assert sorted(tensors) == sorted(f"{cap}.{p}" for cap in CODE_CAPS for p in ("weight", "bias"))
    for cap in CODE_CAPS:
        assert tensors[f"{cap}.weight"].shape == (1, 384)
        assert tensors[f"{cap}.bias"].shape == (1,)
    weights = [tensors[f"{cap}.weight"] for cap in CODE_CAPS]
    assert not np.allclose(weights[0], weights[1])


def test_heads_are_registered_submodules(minilm_bundle: Path, code_experts) -> None:
    import torch
    from safetensors.torch import load_file

    experts, _ = code_experts
    state = experts.state_dict()
    stored = load_file(str(minilm_bundle / HEADS))
    parameter_ids = {id(p) for p in experts.parameters()}
    for cap in CODE_CAPS:
        assert torch.equal(state[f"heads.{cap}.weight"], stored[f"{cap}.weight"])
        assert torch.equal(state[f"heads.{cap}.bias"], stored[f"{cap}.bias"])
        assert id(experts.heads[cap].weight) in parameter_ids
        assert id(experts.heads[cap].bias) in parameter_ids
    named = dict(experts.named_modules())
    assert all(f"heads.{cap}" in named for cap in CODE_CAPS)


def test_missing_head_is_rejected(code_experts) -> None:
    from torch import nn

    from moerm.models.experts import CapabilityExperts

    experts, _ = code_experts
    heads = nn.ModuleDict({cap: experts.heads[cap] for cap in CODE_CAPS[:2]})
    with pytest.raises(ValueError, match="no head"):
        CapabilityExperts(experts.peft_model, heads, CODE_CAPS, (4, 5), 6, "mean")


def test_reloaded_bundle_gives_identical_scores(minilm_bundle: Path, code_experts) -> None:
    import torch

    from moerm.models.loading import load_task_experts

    experts, tokenizer = code_experts
    again, tokenizer_again = load_task_experts(Bundle.load(minilm_bundle), "code")
    batch, batch_again = _encode(tokenizer), _encode(tokenizer_again)
    assert torch.equal(batch["input_ids"], batch_again["input_ids"])
    with torch.inference_mode():
        scores, hidden = experts(batch["input_ids"], batch["attention_mask"])
        scores_again, hidden_again = again(batch["input_ids"], batch["attention_mask"])
    assert scores.shape == (len(TEXTS), len(CODE_CAPS))
    assert hidden.shape == (len(TEXTS), len(CODE_CAPS), 384)
    assert torch.equal(scores, scores_again)
    assert torch.equal(hidden, hidden_again)
    # The experts are distinct (different adapters and heads).
    assert not torch.allclose(scores[:, 0], scores[:, 1])
    assert not torch.allclose(hidden[:, 0], hidden[:, 1])


def test_unreadable_heads_file_is_named(minilm_bundle: Path, bundle_copy: Path) -> None:
    from moerm.models.experts import load_heads

    path = bundle_copy / HEADS
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(BundleError, match="unreadable safetensors") as caught:
        load_heads(path, CODE_CAPS, 384)
    assert str(path) in str(caught.value)
    with pytest.raises(BundleError, match="head for capability 'correctness' missing or misshapen"):
        load_heads(minilm_bundle / HEADS, CODE_CAPS, 128)


@pytest.mark.slow
def test_create_and_load_a_smollm2_bundle(tmp_path: Path) -> None:
    """A decoder bundle: adapters land on the top layers of a bare LlamaModel."""
    import torch

    from moerm.bundle import Capability
    from moerm.bundle_build import TaskDefinition, create_bundle
    from moerm.models.loading import load_task_experts

    tasks = [TaskDefinition("code", "programming", (Capability("correctness"), Capability("style")))]
    bundle = create_bundle(tmp_path / "smollm2", tasks, backbone="smollm2", lora_fraction=0.1)
    backbone = bundle.manifest.backbone
    assert (backbone.kind, backbone.pooling, backbone.num_layers) == ("decoder", "last", 30)
    assert bundle.manifest.tasks["code"].lora.layers == (27, 28, 29)
    experts, tokenizer = load_task_experts(Bundle.load(bundle.root), "code")
    assert experts.first_lora_layer == 27
    tokenizer.padding_side = "right"
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.inference_mode():
        scores, hidden = experts(batch["input_ids"], batch["attention_mask"])
        seq_scores, seq_hidden = experts.forward_sequential(batch["input_ids"], batch["attention_mask"])
    assert scores.shape == (len(TEXTS), 2) and hidden.shape == (len(TEXTS), 2, 576)
    torch.testing.assert_close(scores, seq_scores, atol=1e-5, rtol=0)
    torch.testing.assert_close(hidden, seq_hidden, atol=1e-5, rtol=0)
    assert not torch.allclose(hidden[:, 0], hidden[:, 1])
