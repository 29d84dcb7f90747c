"""PromptEmbedder: a prompt's embedding does not depend on the batch it is embedded in."""

from __future__ import annotations

import numpy as np

from moerm.models.embed import PromptEmbedder


def test_embeddings_do_not_depend_on_batch_order_or_padding() -> None:
    embedder = PromptEmbedder("minilm")
    texts = ["a short one", "a much longer prompt " * 30, "medium length prompt here " * 5]
    together = embedder.embed(texts)
    for i, text in enumerate(texts):
        np.testing.assert_allclose(embedder.embed([text])[0], together[i], atol=1e-5)
