"""A Hugging Face sequence-classification reward model as a pool member (hf:<name>):
built here from the packaged MiniLM backbone (a fresh one-label head), served by
expert_svc --hf-model, registered with the router as an external, and scored like
any member; its reward is the model's own logit for the rendered item."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from expert_svc.config import ExpertConfig
from moerm.v1 import reward_pb2, reward_pb2_grpc, tensor_pb2
from moerm_local import LocalCluster

pytestmark = pytest.mark.integration

ITEMS = [
    ("Write a haiku about tea.", "Steam curls, leaves unfold."),
    ("Reverse a list in Python.", "xs[::-1]"),
]


@pytest.fixture(scope="module")
def hf_reward_model(tmp_path_factory) -> Path:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from moerm.models.backbones import resolve

    torch.manual_seed(0)
    source = resolve("minilm")
    model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=1)
    out = tmp_path_factory.mktemp("hf") / "mini-rm"
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(source).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def cluster(minilm_bundle, redis_url, hf_reward_model) -> Iterator[LocalCluster]:
    external = ExpertConfig(hf_model=str(hf_reward_model), hf_name="mini-rm", dtype="float32")
    running = LocalCluster(
        str(minilm_bundle),
        redis_url=redis_url,
        router_overrides={"cache_namespace": "test-hf-member:"},
        external_experts={"hf:mini-rm": external},
    ).start()
    yield running
    running.stop()


def direct_scores(path: Path) -> list[float]:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    texts = [f"user: {prompt}\nassistant: {response}" for prompt, response in ITEMS]
    with torch.inference_mode():
        return [model(**tokenizer(text, return_tensors="pt")).logits[0, 0].item() for text in texts]


def test_hf_member_scores_like_the_model_itself(cluster, hf_reward_model):
    assert "hf:mini-rm" in cluster.router.router.reward_models
    request = reward_pb2.ScoreRequest(
        items=[
            reward_pb2.ScoreItem(messages=[tensor_pb2.Message(role="user", content=p)], response=r)
            for p, r in ITEMS
        ],
        reward_model="hf:mini-rm",
        return_breakdown=True,
    )
    with grpc.insecure_channel(cluster.address) as channel:
        reply = reward_pb2_grpc.RewardServiceStub(channel).Score(request, timeout=60)
    expected = direct_scores(hf_reward_model)
    assert [r.reward for r in reply.results] == pytest.approx(expected, abs=1e-4)
    assert all(r.reward_models == ["hf:mini-rm"] and r.task == "" for r in reply.results)
    assert dict(reply.results[0].capabilities) == pytest.approx({"score": expected[0]}, abs=1e-4)
    assert expected[0] != pytest.approx(expected[1], abs=1e-3)  # the model tells the items apart


def test_config_takes_a_model_or_a_bundle_task():
    with pytest.raises(SystemExit, match="not both"):
        ExpertConfig(hf_model="x", bundle="b", task="t").validate()
    ExpertConfig(hf_model="/models/skywork-rm").validate()
    assert ExpertConfig(hf_model="/models/skywork-rm").served_name == "skywork-rm"
