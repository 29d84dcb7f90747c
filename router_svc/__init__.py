"""router_svc: the public RewardService endpoint (validation, cache, routing, fan-out)."""
