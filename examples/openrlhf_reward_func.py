"""moerm as OpenRLHF's reward function file (the ``file.py`` route).

    moerm up --port 50051 &
    MOERM_ADDRESS=127.0.0.1:50051 python -m openrlhf.cli.train_ppo_ray ... \\
        --reward.remote_url examples/openrlhf_reward_func.py   # older releases: --remote_rm_url

OpenRLHF imports this file and calls ``reward_func(queries, prompts, labels)`` with
the decoded prompt + response of each sample (chat template and special tokens
kept) and the templated prompts. Each query is split back into the conversation and
the response (:func:`moerm.integrations.templates.split_query`), so moerm's experts
apply their own template once, and scored with per-item outcomes; concurrent calls
of this process share Score requests. An item moerm cannot score gets
``MOERM_FAILED_REWARD`` (default 0.0) and ``moerm_ok`` 0 in ``extra_logs``. A router
with tokens or TLS: ``MOERM_TOKEN`` (or ``MOERM_TOKEN_FILE``) and ``MOERM_ROUTER_TLS*``
(:func:`moerm.client.connection_from_env`).

Without a Python import into the trainer, ``python -m gateway_svc`` serves the same
over HTTP (``--reward.remote_url http://HOST:5000/get_reward``).
"""

from __future__ import annotations

import os

import torch

from moerm.client import connection_from_env
from moerm.integrations.coalescing import CoalescingClient
from moerm.integrations.templates import split_query
from moerm.v1 import reward_pb2, tensor_pb2

_client: CoalescingClient | None = None


def client() -> CoalescingClient:
    global _client
    if _client is None:
        _client = CoalescingClient(
            os.environ.get("MOERM_ADDRESS", "127.0.0.1:50051"),
            policy=os.environ.get("MOERM_POLICY", ""),
            reward_model=os.environ.get("MOERM_REWARD_MODEL", ""),
            **connection_from_env(),
        )
    return _client


def reward_func(
    queries: list[str], prompts: list[str] | None = None, labels: list | None = None, **_
) -> dict:
    failed_reward = float(os.environ.get("MOERM_FAILED_REWARD", "0"))
    prompts = prompts or [None] * len(queries)
    items, rows = [], []
    for i, (query, prompt) in enumerate(zip(queries, prompts, strict=True)):
        try:
            split = split_query(query, prompt)
        except ValueError:
            continue
        messages = [tensor_pb2.Message(role=m["role"], content=m["content"]) for m in split.messages]
        items.append(reward_pb2.ScoreItem(messages=messages, response=split.response))
        rows.append(i)
    rewards = [failed_reward] * len(queries)
    ok, truncated = [0.0] * len(queries), [0.0] * len(queries)
    for i, outcome in zip(rows, client().score_sync(items) if items else [], strict=True):
        if outcome.ok:
            rewards[i], ok[i], truncated[i] = outcome.reward, 1.0, float(outcome.truncated)
    rewards_t = torch.tensor(rewards, dtype=torch.float32)
    return {
        "rewards": rewards_t,
        "scores": rewards_t.clone(),
        "extra_logs": {"moerm_ok": torch.tensor(ok), "moerm_truncated": torch.tensor(truncated)},
    }
