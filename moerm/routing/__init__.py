"""The routing tier's library: choosing reward models per item (numpy, redis.asyncio).

- :mod:`~moerm.routing.bandits`: LinUCB (LASeR) and linear Thompson sampling (BayesianRouter);
- :mod:`~moerm.routing.ensembles`: mean / worst / uwo over a pool's normalized rewards;
- :mod:`~moerm.routing.normalize`: raw trainer feedback -> reward in [0, 1];
- :mod:`~moerm.routing.store`, :mod:`~moerm.routing.state`: bandit state shared through Redis;
- :mod:`~moerm.routing.prior`: the offline router that gives Thompson its prior (trains with torch);
- :mod:`~moerm.routing.offline`, :mod:`~moerm.routing.simulate`: offline accuracy and online
  regret of the policies on labelled data.

Importing this package imports neither torch nor matplotlib.
"""

from moerm.routing.bandits import POLICY_CLASSES, LinUCB, Thompson
from moerm.routing.ensembles import ENSEMBLES, combine
from moerm.routing.normalize import FeedbackNormalizer
from moerm.routing.state import RoutingState
from moerm.routing.store import BanditStore, Decision

__all__ = [
    "ENSEMBLES",
    "POLICY_CLASSES",
    "BanditStore",
    "Decision",
    "FeedbackNormalizer",
    "LinUCB",
    "RoutingState",
    "Thompson",
    "combine",
]
