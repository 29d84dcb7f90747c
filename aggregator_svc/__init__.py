"""aggregator_svc: per-task MLPs turning capability-expert outputs into rewards."""
