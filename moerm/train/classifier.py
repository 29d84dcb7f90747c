"""The router's classifier: prompt embedding (frozen MiniLM) -> task, a
softmax regression trained with cross-entropy; the epoch with the best
validation accuracy is kept. Evaluated on the held-out test set with a
confusion matrix."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from moerm.text import Turn, render_conversation
from moerm.train.loop import seed_everything


def prompt_text(instruction: str) -> str:
    """What the router classifies for a single-turn prompt (as router_svc renders it)."""
    return render_conversation([Turn("user", instruction)])


@dataclass
class RouterResult:
    weight: np.ndarray  # (T, E)
    bias: np.ndarray  # (T,)
    tasks: tuple[str, ...]
    val_accuracy: float
    history: dict = field(default_factory=dict)


def train_classifier(
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    tasks: tuple[str, ...],
    *,
    epochs: int = 300,
    lr: float = 0.05,
    weight_decay: float = 1e-3,
    seed: int = 0,
) -> RouterResult:
    """Shape: x (N, E) unit embeddings, y (N,) task indices."""
    seed_everything(seed)
    x, y = torch.from_numpy(train_x), torch.from_numpy(train_y).long()
    vx, vy = torch.from_numpy(val_x), torch.from_numpy(val_y).long()
    layer = torch.nn.Linear(x.shape[1], len(tasks))
    optimizer = torch.optim.AdamW(layer.parameters(), lr=lr, weight_decay=weight_decay)
    # Inverse-frequency class weights: the classes are unbalanced.
    counts = torch.bincount(y, minlength=len(tasks)).float().clamp(min=1)
    loss_fn = torch.nn.CrossEntropyLoss(weight=counts.sum() / (len(tasks) * counts))
    history = {"train_loss": [], "val_accuracy": []}
    best = (-1.0, None)
    for _ in range(epochs):
        loss = loss_fn(layer(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            acc = float((layer(vx).argmax(1) == vy).float().mean()) if len(vy) else float("nan")
        history["train_loss"].append(loss.item())
        history["val_accuracy"].append(acc)
        if acc >= best[0]:
            best = (acc, (layer.weight.detach().clone(), layer.bias.detach().clone()))
    weight, bias = best[1]
    return RouterResult(
        weight=weight.numpy(), bias=bias.numpy(), tasks=tasks, val_accuracy=best[0], history=history
    )


def confusion_matrix(true: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    matrix = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(matrix, (true, predicted), 1)
    return matrix
