"""expert_svc: one task's capability experts on one backbone, behind a dynamic batcher."""
