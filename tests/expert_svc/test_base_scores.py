"""The expert service's task base reward model (ExpertRequest.return_base / base_only),
over real gRPC on loopback, checked against moerm.models.loading.load_task_base_model."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from expert_svc.app import ExpertApp, build_expert
from expert_svc.config import ExpertConfig
from expert_svc.scorer import ExpertInput
from moerm.bundle import Bundle
from moerm.bundle_build import with_random_base_models
from moerm.errors import field_violations
from moerm.tensors import from_proto
from moerm.text import Turn
from moerm.v1 import expert_pb2, expert_pb2_grpc, tensor_pb2

pytestmark = pytest.mark.integration

CONVERSATIONS = [
    ("Write a Python function that reverses a list.", "def rev(xs):\n    return xs[::-1]"),
    ("Fix: for i in range(len(xs)) print(xs[i])", "for x in xs:\n    print(x)"),
    ("Sort [3, 1, 2].", "sorted([3, 1, 2]) gives [1, 2, 3], a new list; the input is unchanged."),
]


@pytest.fixture(scope="module")
def based_bundle(minilm_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return with_random_base_models(minilm_bundle, tmp_path_factory.mktemp("based") / "b")


def request(**flags) -> expert_pb2.ExpertRequest:
    items = [
        expert_pb2.ExpertItem(messages=[tensor_pb2.Message(role="user", content=p)], response=r)
        for p, r in CONVERSATIONS
    ]
    return expert_pb2.ExpertRequest(task="code", items=items, **flags)


@pytest.fixture
async def expert(based_bundle: Path) -> AsyncIterator[tuple[ExpertApp, expert_pb2_grpc.ExpertServiceStub]]:
    # float32: the scores are compared with a float32 reference to 1e-5.
    config = ExpertConfig(
        bundle=str(based_bundle), task="code", norm_mean=0.25, norm_std=2.0, dtype="float32"
    )
    app = build_expert(config)
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.server.port}") as channel:
            yield app, expert_pb2_grpc.ExpertServiceStub(channel)
    finally:
        await app.stop(grace_s=0)


def reference_base_scores(bundle_dir: Path) -> np.ndarray:
    """Phase 1's base model loaded on its own (moerm.models.experts), not through the scorer."""
    import torch

    from moerm.models.loading import load_task_base_model
    from moerm.text import render

    model, tokenizer = load_task_base_model(Bundle.load(bundle_dir), "code")
    out = []
    for prompt, response in CONVERSATIONS:
        batch = tokenizer([render(tokenizer, (Turn("user", prompt),), response)], return_tensors="pt")
        with torch.inference_mode():
            out.append(float(model(batch["input_ids"], batch["attention_mask"])[0]))
    return np.array(out)


async def test_base_scores_equal_the_task_base_model(expert, based_bundle: Path) -> None:
    app, stub = expert
    both = await stub.ScoreBatch(request(return_base=True, return_hidden=True), timeout=60)
    base = from_proto(both.base_scores)
    assert base.shape == (3,)
    np.testing.assert_allclose(base, reference_base_scores(based_bundle), atol=1e-5)
    # The experts' outputs do not change when base scores are asked for too.
    plain = await stub.ScoreBatch(request(return_hidden=True), timeout=60)
    assert len(plain.base_scores.data) == 0
    np.testing.assert_allclose(from_proto(both.scores), from_proto(plain.scores), atol=1e-6)
    np.testing.assert_allclose(from_proto(both.hidden), from_proto(plain.hidden), atol=1e-6)
    # The base model differs from every capability expert (its own head, no adapters).
    assert not np.allclose(base[:, None], from_proto(plain.scores), atol=1e-3)


async def test_base_only_skips_the_experts(expert) -> None:
    app, stub = expert
    reply = await stub.ScoreBatch(request(base_only=True, return_hidden=True), timeout=60)
    assert len(reply.scores.data) == 0 and len(reply.hidden.data) == 0
    with_experts = await stub.ScoreBatch(request(return_base=True), timeout=60)
    np.testing.assert_allclose(from_proto(reply.base_scores), from_proto(with_experts.base_scores), atol=1e-6)


async def test_describe_reports_base_and_normalization(expert) -> None:
    _, stub = expert
    description = await stub.Describe(expert_pb2.DescribeRequest(), timeout=10)
    assert description.has_base
    assert (description.norm_mean, description.norm_std) == (0.25, 2.0)


def test_mixed_batch_rows_compute_only_what_they_asked_for(based_bundle: Path) -> None:
    """The batcher merges requests with different flags into one scorer call."""
    from expert_svc.scorer import ExpertScorer

    scorer = ExpertScorer(Bundle.load(based_bundle), "code", dtype="float32")
    scorer.load()
    turns = (Turn("user", "Reverse a list in Python."),)
    items = scorer.prepare(
        [
            ExpertInput(turns, "xs[::-1]", experts=True, base=False),
            ExpertInput(turns, "list(reversed(xs))", experts=False, base=True),
            ExpertInput(turns, "xs.reverse()", experts=True, base=True),
        ]
    )
    scores, hidden, base = scorer.score(items)
    assert np.isfinite(scores[[0, 2]]).all() and np.isnan(scores[1]).all() and np.isnan(hidden[1]).all()
    assert np.isnan(base[0]) and np.isfinite(base[[1, 2]]).all()
    alone_scores, _, _ = scorer.score([items[2]])
    np.testing.assert_allclose(scores[2], alone_scores[0], atol=1e-5)
    _, _, alone_base = scorer.score([items[1]])
    np.testing.assert_allclose(base[1], alone_base[0], atol=1e-5)


async def test_untrained_bundle_has_no_base_model(minilm_bundle: Path) -> None:
    app = build_expert(ExpertConfig(bundle=str(minilm_bundle), task="code"))
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.server.port}") as channel:
            stub = expert_pb2_grpc.ExpertServiceStub(channel)
            assert not (await stub.Describe(expert_pb2.DescribeRequest(), timeout=10)).has_base
            for flag in ("return_base", "base_only"):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.ScoreBatch(request(**{flag: True}), timeout=30)
                assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert [v.field for v in field_violations(caught.value)] == [flag]
                assert "no base model" in caught.value.details()
    finally:
        await app.stop(grace_s=0)
