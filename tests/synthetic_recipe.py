"""A small recipe on the project's synthetic data: its settings and inputs (the session
fixture ``trained`` in ``tests/conftest.py`` runs it once)."""

from __future__ import annotations

from moerm.data.synthetic import synthetic_capabilities, synthetic_classifier_examples, synthetic_pairs
from moerm.train.loop import TrainSettings
from moerm.train.settings import RecipeInputs, RecipeSettings

SETTINGS = RecipeSettings(
    phase1=TrainSettings(epochs=2, lr=1e-3, batch_size=8, max_length=96),
    phase2=TrainSettings(epochs=1, lr=1e-3, batch_size=8, max_length=96),
    aggregator_epochs=60,
    router_epochs=100,
)


def synthetic_inputs(per_task: int = 16, drop_capability: str | None = None) -> RecipeInputs:
    pairs, labels = synthetic_pairs(per_task)
    examples = synthetic_classifier_examples(12)
    kept = [x for x in labels if x.capability != drop_capability]
    return RecipeInputs(
        train=[p for i, p in enumerate(pairs) if i % 4],
        validation=[p for i, p in enumerate(pairs) if i % 4 == 0],
        classifier_train=examples[::2],
        classifier_validation=examples[1::2],
        capabilities=synthetic_capabilities(),
        labels=kept,
        description="synthetic (tests)",
    )
