"""Phase 3: the task's aggregator MLP on human pairs, experts frozen.

The experts' outputs (K scores and K pooled hidden states per response) are
computed once; the MLP (``moerm.models.aggregator`` layout: fc2(relu(fc1(x)))
over x = concat_k [hidden_k, score_k]) trains full-batch with Bradley-Terry on
them. The epoch with the best validation accuracy is kept. The reward
normalization (mean, std) is taken over the training responses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from moerm.models.aggregator import features
from moerm.models.experts import RewardModel
from moerm.train.loop import Comparison, bradley_terry_loss, seed_everything


@dataclass
class AggregatorResult:
    tensors: dict[str, np.ndarray]
    norm_mean: float
    norm_std: float
    curve: dict = field(default_factory=dict)  # {"train_loss": [...], "val_accuracy": [...]}


def expert_features(experts, encoder, comparisons: list[Comparison], batch_size: int = 16):
    """(better, worse) feature matrices. Shape: (N, K * (d + 1)) each, float32.

    ``encoder``: :class:`PairTokenizer`, or a trunk-cache encoder whose batches
    carry the precomputed lower layers.
    """

    better, worse = [], []
    with torch.inference_mode():
        for start in range(0, len(comparisons), batch_size):
            chunk = comparisons[start : start + batch_size]
            scores, hidden = experts(*encoder(chunk))
            feats = features(scores.numpy(), hidden.numpy())
            n = len(chunk)
            better.append(feats[:n])
            worse.append(feats[n:])
    k_d = experts.heads[experts.capabilities[0]].in_features + 1
    empty = np.zeros((0, len(experts.capabilities) * k_d), dtype=np.float32)
    return (np.concatenate(better) if better else empty), (np.concatenate(worse) if worse else empty)


class AggregatorMLP(nn.Module):
    def __init__(self, in_features: int, width: int):
        super().__init__()
        self.fc1 = nn.Linear(in_features, width)
        self.fc2 = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x))).squeeze(-1)


def train_aggregator(
    train: tuple[np.ndarray, np.ndarray],
    validation: tuple[np.ndarray, np.ndarray],
    *,
    width: int,
    epochs: int = 200,
    lr: float = 1e-3,
    weight_decay: float = 1e-2,
    seed: int = 0,
) -> AggregatorResult:
    seed_everything(seed)
    better, worse = (torch.from_numpy(a) for a in train)
    val_better, val_worse = (torch.from_numpy(a) for a in validation)
    # Standardize inputs with training statistics folded into fc1 afterwards,
    # so the saved MLP takes raw expert outputs.
    stacked = torch.cat([better, worse])
    mu, sigma = stacked.mean(0), stacked.std(0).clamp(min=1e-6)
    mlp = AggregatorMLP(better.shape[1], width)
    optimizer = torch.optim.AdamW(mlp.parameters(), lr=lr, weight_decay=weight_decay)
    history = {"train_loss": [], "val_accuracy": []}
    best = (-1.0, None)
    for _ in range(epochs):
        loss = bradley_terry_loss(mlp((better - mu) / sigma), mlp((worse - mu) / sigma))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            if len(val_better):
                acc = float((mlp((val_better - mu) / sigma) > mlp((val_worse - mu) / sigma)).float().mean())
            else:
                acc = float("nan")
        history["train_loss"].append(loss.item())
        history["val_accuracy"].append(acc)
        score = acc if acc == acc else -float(loss)  # no validation: keep the last (lowest loss)
        if score >= best[0]:
            best = (score, {k: v.detach().clone() for k, v in mlp.state_dict().items()})
    mlp.load_state_dict(best[1])
    with torch.no_grad():
        # fold the standardization into fc1: W (x - mu) / sigma + b = (W / sigma) x + (b - W mu / sigma)
        w = mlp.fc1.weight / sigma
        b = mlp.fc1.bias - (w * mu).sum(1)
        tensors = {
            "fc1.weight": w.numpy().astype(np.float32),
            "fc1.bias": b.numpy().astype(np.float32),
            "fc2.weight": mlp.fc2.weight.numpy().astype(np.float32),
            "fc2.bias": mlp.fc2.bias.numpy().astype(np.float32),
        }
        raw = mlp((stacked - mu) / sigma).numpy()
    return AggregatorResult(
        tensors=tensors, norm_mean=float(raw.mean()), norm_std=float(raw.std() or 1.0), curve=history
    )


def base_reward_norm(
    experts, base_head: nn.Linear, encoder, comparisons: list[Comparison], batch_size: int = 16
):
    """(mean, std) of the task base model's rewards over both responses of
    ``comparisons``: the experts' backbone with every capability adapter
    disabled, under the base head. The bundle records it so a router can put
    ``base:<task>`` rewards on the scale of the other reward models."""

    if not comparisons:
        return 0.0, 1.0
    model = RewardModel(experts.peft_model, base_head, experts.pooling)
    rewards = []
    with torch.inference_mode(), experts.peft_model.disable_adapter():
        for start in range(0, len(comparisons), batch_size):
            rewards.append(model(*encoder(comparisons[start : start + batch_size])))
    values = torch.cat(rewards)
    return float(values.mean()), float(values.std(correction=0)) or 1.0
