"""moerm as verl's custom reward function.

verl's config (``custom_reward_function``) names a file and a function in it:

    custom_reward_function.path=$(python -c 'import moerm.integrations.verl as m; print(m.__file__)')
    custom_reward_function.name=compute_score          # or compute_score_async

verl calls ``compute_score(data_source, solution_str, ground_truth, extra_info)`` once
per sample; the prompt reaches it only through ``extra_info``, so the dataset's
``extra_info`` must carry it: ``prompt`` (a string or a message list, as in verl's
``prompt`` column), else ``question``. Concurrent calls (verl's async and batch
reward managers, threads) coalesce into one Score request per few milliseconds.

The cluster comes from ``MOERM_ADDRESS`` (default ``127.0.0.1:50051``), the policy
from ``MOERM_POLICY`` and ``MOERM_REWARD_MODEL``, or from keyword arguments
(verl's ``custom_reward_function.reward_kwargs``); a router's bearer token and TLS
from ``MOERM_TOKEN`` (or ``MOERM_TOKEN_FILE``) and ``MOERM_ROUTER_TLS*``
(:func:`moerm.client.connection_from_env`; not reward_kwargs, which verl logs with its
config). Each call returns
``{"score": reward, "moerm_ok": 1.0, "moerm_truncated": 0.0}``; an item moerm could
not score gets ``score`` = ``failure_score`` (default 0.0) and ``moerm_ok`` 0.0, since
verl needs a number per sample; a cluster that cannot be reached (past the retries)
raises ``grpc.RpcError``.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from moerm.client import connection_from_env
from moerm.integrations.coalescing import CoalescingClient, Outcome
from moerm.integrations.trl import to_score_item

PROMPT_KEYS = ("prompt", "question", "raw_prompt")

_clients: dict[tuple[str, str, str], CoalescingClient] = {}
_lock = threading.Lock()


def client_for(address: str | None = None, policy: str | None = None, reward_model: str | None = None):
    """One shared client per (address, policy, reward model) in this process; token and
    TLS from the environment."""
    key = (
        address or os.environ.get("MOERM_ADDRESS", "127.0.0.1:50051"),
        policy if policy is not None else os.environ.get("MOERM_POLICY", ""),
        reward_model if reward_model is not None else os.environ.get("MOERM_REWARD_MODEL", ""),
    )
    with _lock:
        if key not in _clients:
            _clients[key] = CoalescingClient(
                key[0], policy=key[1], reward_model=key[2], raise_errors=True, **connection_from_env()
            )
        return _clients[key]


def close_clients() -> None:
    """Close this process's shared clients (tests; a trainer process just exits)."""
    with _lock:
        clients = list(_clients.values())
        _clients.clear()
    for client in clients:
        client.close()


def prompt_of(extra_info: dict | None) -> Any:
    """The prompt a sample answers, from verl's ``extra_info``."""
    for key in PROMPT_KEYS:
        value = (extra_info or {}).get(key)
        if value is not None and len(value) > 0:
            return value
    raise ValueError(
        f"moerm needs the prompt: put it in the dataset's extra_info under one of {', '.join(PROMPT_KEYS)} "
        f"(got keys {sorted(extra_info or {})})"
    )


def _result(outcome: Outcome, failure_score: float) -> dict[str, float]:
    return {
        "score": outcome.reward if outcome.ok else failure_score,
        "moerm_ok": float(outcome.ok),
        "moerm_truncated": float(outcome.truncated),
    }


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: Any = None,
    extra_info: dict | None = None,
    *,
    address: str | None = None,
    policy: str | None = None,
    reward_model: str | None = None,
    failure_score: float = 0.0,
    **_: Any,
) -> dict[str, float]:
    """verl's sync reward function: one sample's moerm reward."""
    item = to_score_item(prompt_of(extra_info), solution_str)
    (outcome,) = client_for(address, policy, reward_model).score_sync([item])
    return _result(outcome, failure_score)


async def compute_score_async(
    data_source: str,
    solution_str: str,
    ground_truth: Any = None,
    extra_info: dict | None = None,
    *,
    address: str | None = None,
    policy: str | None = None,
    reward_model: str | None = None,
    failure_score: float = 0.0,
    **_: Any,
) -> dict[str, float]:
    """verl's async reward function: one sample's moerm reward."""
    item = to_score_item(prompt_of(extra_info), solution_str)
    (outcome,) = await client_for(address, policy, reward_model).score([item])
    return _result(outcome, failure_score)
