"""The expert's token cut: beyond the backbone's context it keeps the tokenizer's leading
special tokens and the latest tokens (what training's left truncation keeps) and says
per item that it cut, over real gRPC on loopback (MiniLM: 512 tokens)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from expert_svc.app import ExpertApp, build_expert
from expert_svc.config import ExpertConfig
from expert_svc.scorer import ExpertInput, keep_within
from moerm.text import Turn, render
from moerm.v1 import expert_pb2, expert_pb2_grpc, tensor_pb2

LONG = "The fox ran across the field and back again. " * 200  # ~9,000 characters, ~2,000 tokens
SHORT = "The fox ran."


def test_keep_within_keeps_the_head_and_the_end() -> None:
    assert keep_within([1, 2, 3], 3, 1) == ((1, 2, 3), False)
    assert keep_within([101, 5, 6, 7, 8, 102], 4, 1) == ((101, 7, 8, 102), True)
    assert keep_within([5, 6, 7, 8], 2) == ((7, 8), True)


@pytest.fixture
async def expert(minilm_bundle: Path) -> AsyncIterator[tuple[ExpertApp, expert_pb2_grpc.ExpertServiceStub]]:
    app = build_expert(ExpertConfig(bundle=str(minilm_bundle), task="writing", dtype="float32"))
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.server.port}") as channel:
            yield app, expert_pb2_grpc.ExpertServiceStub(channel)
    finally:
        await app.stop(grace_s=0)


@pytest.mark.integration
async def test_a_long_item_is_cut_as_training_cuts_it_and_marked(expert) -> None:
    app, stub = expert
    scorer = app.scorer
    assert scorer.max_length == 512 and scorer.head == 1  # MiniLM: [CLS] ... [SEP]
    turns = (Turn("user", "Tell a story about a fox."),)
    long, short = scorer.prepare([ExpertInput(turns, LONG), ExpertInput(turns, SHORT)])
    assert long.truncated and not short.truncated
    tokenizer = scorer.tokenizer
    # The ids are those of the training tokenizer's left truncation (moerm.train.loop.PairTokenizer).
    side = tokenizer.truncation_side
    tokenizer.truncation_side = "left"
    try:
        trained = tokenizer(render(tokenizer, turns, LONG), truncation=True, max_length=512)["input_ids"]
    finally:
        tokenizer.truncation_side = side
    assert list(long.ids) == trained
    assert long.ids[0] == tokenizer.cls_token_id and long.ids[-1] == tokenizer.sep_token_id

    message = [tensor_pb2.Message(role="user", content="Tell a story about a fox.")]
    reply = await stub.ScoreBatch(
        expert_pb2.ExpertRequest(
            task="writing",
            items=[
                expert_pb2.ExpertItem(messages=message, response=LONG),
                expert_pb2.ExpertItem(messages=message, response=SHORT),
            ],
        ),
        timeout=60,
    )
    assert list(reply.truncated) == [True, False]
