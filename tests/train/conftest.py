"""A small recipe run on the project's synthetic data, shared by the training tests."""

from __future__ import annotations

import pytest

from moerm.data.synthetic import synthetic_capabilities, synthetic_classifier_examples, synthetic_pairs
from moerm.train.loop import TrainSettings
from moerm.train.recipe import Recipe
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


@pytest.fixture(scope="package")
def trained(tmp_path_factory):
    """(recipe, bundle): every step run once; "tone" has no labels (stays untrained)."""
    work = tmp_path_factory.mktemp("work")
    recipe = Recipe(work, synthetic_inputs(drop_capability="tone"), SETTINGS, progress=False)
    recipe.all()
    bundle = recipe.assemble(tmp_path_factory.mktemp("bundle") / "b")
    return recipe, bundle
