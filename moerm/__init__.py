"""moerm: a distributed double-layer mixture-of-experts reward-model service.

The shared library of the three services (router_svc, expert_svc,
aggregator_svc): wire contract (``moerm.v1``), errors, server start-up,
config, bundle format, score cache, client and command line.
"""

__version__ = "0.1.0"

from moerm.client import AsyncRewardClient, Reward, RewardClient  # noqa: E402

__all__ = ["AsyncRewardClient", "Reward", "RewardClient", "__version__"]
