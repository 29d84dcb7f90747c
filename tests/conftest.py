"""Shared fixtures.

``MOERM_TEST_DEVICE`` (default ``cpu``) moves the model tests that take a ``device``
to another device (``bench/gpu_check.sh`` runs them on CUDA).

Session-wide: ``redis_url`` (a Redis-protocol server for cache tests),
``minilm_bundle`` (a small untrained bundle on the MiniLM backbone), ``trained`` (the
recipe run once on synthetic data, and its bundle), ``shared_dir`` and ``shared`` (the
shared preference data; skip when it is absent) and, for the slow tier, ``smollm2_bundle``
(one task with K = 5 experts and a base model on SmolLM2).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # before anything imports transformers

import pytest  # noqa: E402

# Tasks of the session bundle: small, so that creating and loading it is quick.
BUNDLE_TASKS = {
    "code": ("programming, writing or fixing code", ("correctness", "efficiency", "readability")),
    "writing": ("write a story, poem, essay or letter", ("relevance", "fluency")),
}


@pytest.fixture(scope="session")
def device() -> str:
    """Where the model tests run: $MOERM_TEST_DEVICE, default cpu."""
    name = os.environ.get("MOERM_TEST_DEVICE", "cpu")
    if name.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            pytest.fail(f"MOERM_TEST_DEVICE={name} but CUDA is not available")
    return name


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """$REDIS_URL when set, else a private embedded valkey-server for the session."""
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    from moerm.embedded_redis import EmbeddedRedis

    with EmbeddedRedis() as server:
        yield server.url


@pytest.fixture(scope="session")
def minilm_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of a bundle created once per session: MiniLM backbone, tasks
    "code" (3 capabilities) and "writing" (2). Treat it as read-only; copy it
    to modify it."""
    from moerm.bundle import Capability
    from moerm.bundle_build import TaskDefinition, create_bundle

    tasks = [
        TaskDefinition(name, description, tuple(Capability(cap) for cap in caps))
        for name, (description, caps) in BUNDLE_TASKS.items()
    ]
    out = tmp_path_factory.mktemp("bundles") / "minilm"
    create_bundle(out, tasks, backbone="minilm", seed=0)
    return out


@pytest.fixture(scope="session")
def smollm2_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of an untrained SmolLM2 bundle with the serving layout (task "code",
    K = 5 capability experts with LoRA on the top quarter, a task base model); random
    adapters and heads, so experts, base model and backbone all differ."""
    from moerm.bundle import Capability
    from moerm.bundle_build import TaskDefinition, create_bundle, with_random_base_models

    caps = ("correctness", "efficiency", "readability", "explanation", "safety")
    task = TaskDefinition("code", "programming, writing or fixing code", tuple(Capability(c) for c in caps))
    root = tmp_path_factory.mktemp("bundles")
    create_bundle(root / "smollm2-plain", [task], backbone="smollm2", seed=0)
    return with_random_base_models(root / "smollm2-plain", root / "smollm2")


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory):
    """(recipe, bundle): every step of the recipe run once on synthetic data; "tone" has
    no labels (stays untrained)."""
    from moerm.train.recipe import Recipe
    from tests.synthetic_recipe import SETTINGS, synthetic_inputs

    work = tmp_path_factory.mktemp("work")
    recipe = Recipe(work, synthetic_inputs(drop_capability="tone"), SETTINGS, progress=False)
    recipe.all()
    bundle = recipe.assemble(tmp_path_factory.mktemp("bundle") / "b")
    return recipe, bundle


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The shared preference data's folder; skips the test when it is absent."""
    from moerm.data.loaders import missing_shared_files, shared_data_dir

    path = shared_data_dir()
    if path is None:
        pytest.skip("shared data not found: set $MOERM_DATA_DIR or put it in <repo>/../shared/data")
    missing = missing_shared_files(path)
    if missing:
        pytest.skip(f"shared data in {path} lacks {', '.join(missing)}")
    return path


@pytest.fixture(scope="session")
def shared(shared_dir: Path):
    """Everything in the shared data folder, loaded once."""
    from moerm.data.splits import load_shared

    return load_shared(shared_dir)
