"""moerm as the reward of the RL trainers people run.

- :mod:`moerm.integrations.coalescing`: an asyncio client that merges concurrent
  single-item calls into one Score request (verl and OpenRLHF call once per sample)
  and asks for per-item outcomes, with a blocking face for synchronous callers;
- :mod:`moerm.integrations.trl`: reward functions for TRL's ``GRPOTrainer`` (sync and
  async), with optional ``Feedback`` of a per-item outcome column;
- :mod:`moerm.integrations.verl`: ``compute_score`` for verl's
  ``custom_reward_function`` (sync and async);
- :mod:`moerm.integrations.templates`: templated text (ChatML, Llama 3) back into
  turns and a response, for OpenRLHF's ``query`` strings.

None of these import torch.
"""
