"""The model identity recorded in a checkpoint becomes the flags' defaults when resuming it with --load,
so a user (or a converted HuggingFace checkpoint) need not repeat them. Explicit flags still win."""

from __future__ import annotations

import os

import torch

from megatron_ext.checkpoint.paths import existing_iteration_dir
from megatron_ext.models.identity import ModelIdentity

# Run flags that a checkpoint also supplies: the context it was trained at, and the --vocab-size its
# NullTokenizer or mock data used (with a real tokenizer the tokenizer decides the vocabulary).
RUN_FLAGS = ("seq_length", "vocab_size")


# The tokenizer a checkpoint was trained (or imported) with: --load needs no tokenizer flags either.
TOKENIZER_FLAGS = ("tokenizer_type", "tokenizer_model", "special_tokens", "vocab_pad_to")


def _saved_common(root: str) -> dict:
    """common.pt of ROOT's latest checkpoint; {} when there is none yet (or it cannot be read:
    load_checkpoint reports the damage with the fix)."""
    latest = os.path.join(root, "latest_checkpointed_iteration.txt")
    if not os.path.isfile(latest):
        return {}
    iteration = open(latest).read().strip()
    common = os.path.join(existing_iteration_dir(root, int(iteration)), "common.pt") if iteration.isdigit() else ""
    if not os.path.isfile(common):
        return {}
    try:
        return torch.load(common, map_location="cpu", weights_only=True)
    except Exception:
        return {}


def checkpoint_model_flags(root: str) -> dict:
    """The model identity of ROOT's latest checkpoint as flags (plus RUN_FLAGS); {} when there is none yet."""
    common = _saved_common(root)
    if not common:
        return {}
    saved = common.get("args") or {}
    flags = {key: saved[key] for key in RUN_FLAGS if saved.get(key) is not None}
    try:
        flags.update(ModelIdentity.from_checkpoint(common).as_flags())
    except SystemExit:
        pass  # load_checkpoint reports an unreadable identity with the fix
    return flags


def checkpoint_tokenizer_flags(root: str) -> dict:
    """The tokenizer flags saved in ROOT's latest checkpoint. A checkpoint that carries its tokenizer
    (ROOT/tokenizer, as tools/convert_from_hf.py writes) supplies it when the recorded path is gone
    (the checkpoint was copied elsewhere)."""
    saved = _saved_common(root).get("args") or {}
    flags = {key: saved[key] for key in TOKENIZER_FLAGS if saved.get(key) is not None}
    carried = os.path.join(root, "tokenizer")
    if flags.get("tokenizer_model") and not os.path.exists(flags["tokenizer_model"]) and os.path.isdir(carried):
        flags["tokenizer_model"] = carried
    return flags


def checkpoint_provenance(root: str) -> dict:
    """What an import recorded about its Hugging Face source (hf_model_format, hf_config, ...), so checkpoints
    trained from it carry it on and their export restores the config fields Megatron does not model."""
    saved = _saved_common(root).get("args") or {}
    return {key: value for key, value in saved.items() if key.startswith("hf_")}
