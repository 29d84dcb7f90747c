"""The live routing tier: choosing reward models per item (numpy, redis.asyncio).

- :mod:`~moerm.routing.policies`: the table of routing policies (task, fixed, bandits,
  ensembles) that the router, its config and the bandit state read;
- :mod:`~moerm.routing.bandits`: LinUCB (LASeR) and linear Thompson sampling (BayesianRouter);
- :mod:`~moerm.routing.ensembles`: mean / worst / uwo over a pool's normalized rewards;
- :mod:`~moerm.routing.pool`: the reward models of the pool and their reward scales;
- :mod:`~moerm.routing.feedback`: raw trainer feedback -> reward in [0, 1];
- :mod:`~moerm.routing.store`, :mod:`~moerm.routing.state`: bandit state shared through Redis;
- :mod:`~moerm.routing.prior`: the offline router file that gives Thompson its prior.

Offline evaluation and simulation of the policies live in :mod:`moerm.evaluate.routing`.
Importing this package imports neither torch nor matplotlib.
"""

from moerm.routing.bandits import LinUCB, Thompson
from moerm.routing.ensembles import ENSEMBLES, combine
from moerm.routing.feedback import FeedbackNormalizer
from moerm.routing.policies import POLICIES, Hyperparameters, Policy, register
from moerm.routing.state import RoutingState
from moerm.routing.store import BanditStore, Decision

__all__ = [
    "ENSEMBLES",
    "POLICIES",
    "BanditStore",
    "Decision",
    "FeedbackNormalizer",
    "Hyperparameters",
    "LinUCB",
    "Policy",
    "RoutingState",
    "Thompson",
    "combine",
    "register",
]
