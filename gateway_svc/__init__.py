"""HTTP gateway: OpenRLHF's remote reward-model protocol in front of RewardService."""
