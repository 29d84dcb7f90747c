"""moerm as a reward function of TRL's ``GRPOTrainer``.

    from moerm.integrations.trl import MoermReward
    trainer = GRPOTrainer(model, reward_funcs=[MoermReward("127.0.0.1:50051")], ...)

TRL calls ``f(prompts=..., completions=..., completion_ids=..., **columns)`` with the
dataset's other columns as lists; prompts and completions are strings or message
lists. Each call is one Score request (with per-item outcomes): an item moerm cannot
score gets ``None`` (TRL turns it into NaN and leaves it out of the advantages).
:class:`AsyncMoermReward` is the ``async`` twin (TRL runs async reward functions
concurrently with each other).

With ``outcome_column="passed"`` (a dataset column holding a per-item outcome) or
``outcome_fn`` (a verifier called like a reward function, returning e.g. pass 1 /
fail 0 per item) that outcome goes back to moerm as ``Feedback`` for the items moerm
scored, so the bandit policies
(``policy="linucb"`` or ``"thompson"``) learn which reward model of the pool to trust.

A router with ``--auth-tokens`` or a TLS port: ``token=``, ``credentials=``
(:func:`moerm.security.channel_credentials`) and ``server_name=``; what is not given
comes from the environment (``MOERM_TOKEN`` or ``MOERM_TOKEN_FILE``, ``MOERM_ROUTER_TLS``
/ ``MOERM_ROUTER_TLS_CA`` / ``_CERT`` / ``_KEY`` / ``_SERVER_NAME``:
:func:`moerm.client.connection_from_env`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from moerm.client import connection_from_env
from moerm.integrations.coalescing import CoalescingClient, Outcome
from moerm.v1 import reward_pb2, tensor_pb2

log = logging.getLogger(__name__)


def _text(content: Any) -> str:
    """A message's content: a string, or the text parts of a multimodal content list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return "" if content is None else str(content)


def to_score_item(prompt: Any, completion: Any) -> reward_pb2.ScoreItem:
    """One TRL (prompt, completion) pair, standard (strings) or conversational
    (message lists; the completion's assistant contents joined) as a ScoreItem."""
    if isinstance(completion, list):
        response = "".join(
            _text(m.get("content")) for m in completion if m.get("role", "assistant") == "assistant"
        )
    else:
        response = _text(completion)
    if isinstance(prompt, list):
        messages = [
            tensor_pb2.Message(role=str(m.get("role", "")), content=_text(m.get("content"))) for m in prompt
        ]
        return reward_pb2.ScoreItem(messages=messages, response=response)
    return reward_pb2.ScoreItem(prompt=_text(prompt), response=response)


class _MoermRewardBase:
    """Shared by the sync and async reward functions. ``client``: a
    :class:`CoalescingClient` to share (else one is made for ``address``, with
    ``token``, ``credentials`` and ``server_name``, each from the environment when
    None)."""

    def __init__(
        self,
        address: str = "127.0.0.1:50051",
        *,
        policy: str = "",
        reward_model: str = "",
        outcome_column: str | None = None,
        outcome_fn: Callable[..., Sequence[float | None]] | None = None,
        client: CoalescingClient | None = None,
        timeout_s: float = 180.0,
        name: str = "moerm",
        token: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        server_name: str | None = None,
    ):
        if client is None:
            given = {"token": token, "credentials": credentials, "server_name": server_name}
            connection = {**connection_from_env(), **{k: v for k, v in given.items() if v is not None}}
            # A cluster that cannot be reached (past the client's retries) raises: training
            # on all-None rewards would go on silently.
            client = CoalescingClient(
                address,
                policy=policy,
                reward_model=reward_model,
                timeout_s=timeout_s,
                raise_errors=True,
                **connection,
            )
        self.client = client
        if outcome_column is not None and outcome_fn is not None:
            raise ValueError("give outcome_column or outcome_fn, not both")
        self.outcome_column = outcome_column
        self.outcome_fn = outcome_fn
        self.__name__ = name  # TRL names the reward's log columns after it
        self.last_outcomes: list[Outcome] = []
        self.feedback_outcomes: dict[str, str] = {}  # id -> outcome, over the whole run

    def _items(self, prompts: Sequence[Any], completions: Sequence[Any]) -> list[reward_pb2.ScoreItem]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        return [to_score_item(p, c) for p, c in zip(prompts, completions, strict=True)]

    def _rewards(self, outcomes: list[Outcome], kwargs: dict) -> list[float | None]:
        self.last_outcomes = outcomes
        failed = [o for o in outcomes if not o.ok]
        if failed:
            log.warning(
                "moerm: %d of %d items not scored (first: %s %s: %s)",
                len(failed),
                len(outcomes),
                failed[0].code,
                failed[0].field,
                failed[0].error,
            )
        log_extra: Callable | None = kwargs.get("log_extra")
        if log_extra is not None:
            log_extra(f"{self.__name__}_outcome", [self._outcome_label(o) for o in outcomes])
        return [o.reward for o in outcomes]

    @staticmethod
    def _outcome_label(outcome: Outcome) -> str:
        if not outcome.ok:
            return f"{outcome.code} {outcome.field}".strip()
        return "truncated" if outcome.truncated else "ok"

    def _feedback_of(self, outcomes: list[Outcome], prompts, completions, kwargs: dict) -> dict[str, float]:
        """id -> the caller's per-item outcome, for the scored items that have an id."""
        if self.outcome_fn is not None:
            column = list(self.outcome_fn(prompts=prompts, completions=completions, **kwargs))
        elif self.outcome_column is None:
            return {}
        else:
            column = kwargs.get(self.outcome_column)
            if column is None:
                raise KeyError(
                    f"outcome_column {self.outcome_column!r} is not among the reward function's arguments"
                )
        if len(column) != len(outcomes):
            raise ValueError(f"the outcome has {len(column)} values for {len(outcomes)} items")
        feedback = {}
        for outcome, value in zip(outcomes, column, strict=True):
            if outcome.ok and outcome.id and value is not None and math.isfinite(float(value)):
                feedback[outcome.id] = float(value)
        return feedback


class MoermReward(_MoermRewardBase):
    """Synchronous TRL reward function; see the module docstring."""

    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any
    ) -> list[float | None]:
        outcomes = self.client.score_sync(self._items(prompts, completions))
        rewards = self._rewards(outcomes, kwargs)
        feedback = self._feedback_of(outcomes, prompts, completions, kwargs)
        if feedback:
            self.feedback_outcomes.update(self.client.feedback_sync(feedback))
        return rewards


class AsyncMoermReward(_MoermRewardBase):
    """Asynchronous TRL reward function; see the module docstring."""

    async def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any
    ) -> list[float | None]:
        outcomes = await self.client.score(self._items(prompts, completions))
        rewards = self._rewards(outcomes, kwargs)
        feedback = self._feedback_of(outcomes, prompts, completions, kwargs)
        if feedback:
            self.feedback_outcomes.update(await self.client.feedback(feedback))
        return rewards
