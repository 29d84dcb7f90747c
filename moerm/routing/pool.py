"""The reward-model pool: every reward model the router may score an item with.

Three kinds, each named so that a request can pick it (``ScoreRequest.reward_model``):

- ``dmoerm:<task>``: a task's capability experts plus its aggregator MLP. The
  aggregator already applies the bundle's ``TaskSpec.norm_mean/norm_std``, so the
  pool's normalization of these is the identity.
- ``base:<task>``: phase 1's task base reward model (the base head on the task
  backbone, no capability adapters), served by the task's expert service. Only for
  tasks with a base model (``TaskSpec.base_lora``; untrained bundles have none).
  Normalized with the bundle's ``TaskSpec.base_norm_mean/base_norm_std`` (phase 3
  measures them on the training responses) unless the router's config overrides it.
- external: any service speaking ``moerm.v1.ExpertService`` at an address; its
  reward is the first column of its scores. Its task and (unless given by the
  router's config) its normalization come from its ``Describe``. An external whose
  address is an ``http://`` or ``https://`` URL speaks OpenRLHF's remote reward-model
  protocol instead (``POST {"query", "prompts"}`` -> ``{"rewards"}``): it has no
  Describe, so no task, and its normalization is the router config's or none.

Every member carries a normalization ``reward = (raw - mean) / std`` so that rewards
of different reward models are comparable (the ensembles and bandits need that).
This module is numpy only.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

import numpy as np

from moerm.bundle import Manifest

DMOERM = "dmoerm"
BASE = "base"
EXTERNAL = "external"
_PREFIXES = {DMOERM: "dmoerm:", BASE: "base:"}
_EXTERNAL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,99}$")
HTTP_SCHEMES = ("http://", "https://")


def is_http(address: str) -> bool:
    """Whether an external's address is a URL of OpenRLHF's HTTP protocol (not gRPC)."""
    return address.startswith(HTTP_SCHEMES)


@dataclass(frozen=True)
class RewardScale:
    """A reward model's scale: ``reward = (raw - mean) / std``; ``source`` says where it came from
    ("aggregator", "bundle", "config", "describe" or "none")."""

    mean: float = 0.0
    std: float = 1.0
    source: str = "none"

    def __post_init__(self) -> None:
        if not (np.isfinite(self.mean) and np.isfinite(self.std) and self.std > 0):
            raise ValueError(f"normalization needs a finite mean and std > 0, got {self.mean}, {self.std}")

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """Shape: any -> same, float64."""
        return (np.asarray(raw, dtype=np.float64) - self.mean) / self.std


@dataclass(frozen=True)
class RewardModelSpec:
    """One reward model of the pool.

    ``task``: the bundle task (dmoerm, base) or the task an external service serves
    (empty until it is described). ``version``: an external's bundle version from its
    Describe; it is part of the cache identity so that a changed model is not
    answered from old cache entries.
    """

    name: str
    kind: str
    task: str = ""
    address: str = ""
    scale: RewardScale = RewardScale()
    version: str = ""

    @property
    def in_bundle(self) -> bool:
        return self.kind in (DMOERM, BASE)

    @property
    def over_http(self) -> bool:
        """An external reached over HTTP (OpenRLHF's protocol; no Describe)."""
        return self.kind == EXTERNAL and is_http(self.address)

    @property
    def cache_id(self) -> str:
        """Identity of this reward model's scores in the score cache."""
        if self.kind == EXTERNAL:
            return f"{self.name}@{self.version or self.address}"
        return self.name

    def scaled(self, raw: np.ndarray) -> np.ndarray:
        """The reward on the pool's common scale. Shape: any -> same, float64."""
        return self.scale.apply(raw)


def dmoerm_name(task: str) -> str:
    return _PREFIXES[DMOERM] + task


def base_name(task: str) -> str:
    return _PREFIXES[BASE] + task


class RewardModelPool:
    """The pool in a fixed order: bundle tasks' ``dmoerm:`` members, then their
    ``base:`` members, then the externals in the order configured. Bandit arms are
    indexed in this order."""

    def __init__(self, specs: Sequence[RewardModelSpec]):
        names = [spec.name for spec in specs]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"reward-model pool: duplicate names {duplicates}")
        if not specs:
            raise ValueError("reward-model pool: no reward models")
        self.specs = tuple(specs)
        self._by_name = {spec.name: spec for spec in specs}

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.specs)

    def __getitem__(self, name: str) -> RewardModelSpec:
        return self._by_name[name]

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[RewardModelSpec]:
        return iter(self.specs)

    def __len__(self) -> int:
        return len(self.specs)

    def externals(self) -> tuple[RewardModelSpec, ...]:
        return tuple(spec for spec in self.specs if spec.kind == EXTERNAL)

    def described(
        self, name: str, *, task: str, version: str = "", scale: RewardScale | None = None
    ) -> RewardModelPool:
        """A pool where external ``name`` has its served ``task``, ``version`` and,
        unless the config gave one, the normalization its Describe declared."""
        spec = self[name]
        if spec.kind != EXTERNAL:
            raise ValueError(f"{name!r} is not an external reward model")
        keep_config = spec.scale.source == "config"
        updated = replace(
            spec, task=task, version=version, scale=spec.scale if keep_config or scale is None else scale
        )
        return RewardModelPool([updated if s.name == name else s for s in self.specs])


def check_external_name(name: str) -> None:
    """Raise ValueError unless ``name`` can name an external reward model."""
    if not _EXTERNAL_NAME.match(name):
        raise ValueError(
            f"external reward model name {name!r}: use letters, digits and _.:- (at most 100 characters)"
        )
    for prefix in _PREFIXES.values():
        if name.startswith(prefix):
            raise ValueError(f"external reward model name {name!r}: the prefix {prefix!r} is reserved")


def _check_url(name: str, url: str) -> None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises on a port that is not a number in range)
    except ValueError as error:
        raise ValueError(f"external reward model {name!r}: {url!r}: {error}") from None
    if not parts.hostname:
        raise ValueError(f"external reward model {name!r}: {url!r} is not a URL with a host")


def build_pool(
    manifest: Manifest,
    *,
    externals: Mapping[str, str] | None = None,
    norms: Mapping[str, tuple[float, float]] | None = None,
) -> RewardModelPool:
    """The pool of a bundle plus external reward models.

    Args:
        manifest: the bundle's manifest (its tasks give ``dmoerm:`` and ``base:`` members).
        externals: name -> ``host:port`` of a ``moerm.v1.ExpertService``, or the
            ``http(s)://host:port/path`` URL of a reward model speaking OpenRLHF's
            ``/get_reward`` protocol.
        norms: reward model name -> (mean, std), overriding what the member would get
            otherwise (``base:`` members and externals; a ``dmoerm:`` member is
            normalized by the aggregator with the bundle's values and cannot be
            overridden).

    Raises ValueError naming the offending name.
    """
    externals = dict(externals or {})
    norms = dict(norms or {})
    specs = [
        RewardModelSpec(dmoerm_name(task), DMOERM, task=task, scale=RewardScale(source="aggregator"))
        for task in manifest.tasks
    ]
    specs += [
        RewardModelSpec(
            base_name(task),
            BASE,
            task=task,
            scale=RewardScale(spec.base_norm_mean, spec.base_norm_std, "bundle"),
        )
        for task, spec in manifest.tasks.items()
        if spec.base_lora is not None
    ]
    for name, address in externals.items():
        check_external_name(name)
        if not address:
            raise ValueError(f"external reward model {name!r}: empty address")
        if is_http(address):
            _check_url(name, address)
        specs.append(RewardModelSpec(name, EXTERNAL, address=address))
    known = {spec.name: spec for spec in specs}
    for name, (mean, std) in norms.items():
        if name not in known:
            raise ValueError(f"normalization for {name!r}: no such reward model (pool: {sorted(known)})")
        if known[name].kind == DMOERM:
            raise ValueError(
                f"normalization for {name!r}: dmoerm rewards are normalized by the aggregator "
                "with the bundle's TaskSpec.norm_mean/norm_std"
            )
        known[name] = replace(known[name], scale=RewardScale(float(mean), float(std), "config"))
    return RewardModelPool([known[spec.name] for spec in specs])
