"""Offline routing research: every reward model of the pool scores held-out pairs
(:mod:`~.pool_scores`), offline routing accuracy (:mod:`~.offline`), online regret
simulation (:mod:`~.simulate`), the Thompson prior's training (:mod:`~.prior`), the
report and the ``moerm route-eval`` / ``route-prior`` commands. The live router needs
none of it (:mod:`moerm.routing`).
"""
