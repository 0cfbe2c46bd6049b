"""Streaming conversion between Hugging Face checkpoints and this project's torch_dist checkpoints.

Both directions move one group (the embedding, one layer, the final norm, the output layer) at a time,
so peak memory is about one layer, never the model. The pieces: torch_dist_io.py reads and writes the
Megatron side, hf_files.py the HF side, and each HF layout (hf_llama.py, hf_crystalcoder.py) is one
weight-map table (weight_maps.py) that both directions below run, plus its config.json function.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from argparse import Namespace
from contextlib import contextmanager

import torch

from megatron_ext.checkpoint import hf_crystalcoder, hf_llama, hf_openlm, hf_tokenizer_export, weight_maps
from megatron_ext.checkpoint.hf_arch import ConversionError, groups, restore_identity
from megatron_ext.checkpoint.hf_files import (CODE_DIR, HFWeights, SafetensorsStreamWriter, auto_map_modules,
                                              copy_remote_code, copy_tokenizer, export_remote_code, plan_shards,
                                              read_json)
from megatron_ext.checkpoint.integrity import IntegrityError, verify_checksums, write_checksums
from megatron_ext.checkpoint.model_tensors import model_tensors
from megatron_ext.checkpoint.paths import LATEST_FILE, iteration_dir, write_text_atomic
from megatron_ext.checkpoint.torch_dist_io import TorchDistReader, TorchDistWriter, read_common
from megatron_ext.models.identity import CHECKPOINT_KEY, ModelIdentity

# tools/ and tests/ import these from here; ConversionError and read_common live in hf_arch and torch_dist_io.
__all__ = ["DTYPES", "ConversionError", "hf_to_megatron", "megatron_to_hf", "read_common"]

FORMATS = {hf_llama.NAME: hf_llama, hf_crystalcoder.NAME: hf_crystalcoder, hf_openlm.NAME: hf_openlm}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# ---- output directories ------------------------------------------------------------------------

@contextmanager
def staged_output(path: str, overwrite: bool):
    """Yield a temporary sibling directory; on success it replaces `path` in one rename."""
    path = os.path.abspath(path)
    occupied = os.path.exists(path) and not (os.path.isdir(path) and not os.listdir(path))
    if occupied and not overwrite:
        raise ConversionError(f"{path} already exists; pass --overwrite to replace it, or choose another directory")
    tmp = f"{path}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if os.path.lexists(path):
        old = f"{path}.old-{os.getpid()}"
        os.replace(path, old)
    os.replace(tmp, path)
    if old:
        shutil.rmtree(old) if os.path.isdir(old) else os.remove(old)


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="group", disable=not enabled, file=sys.stderr)


# ---- Hugging Face -> Megatron ------------------------------------------------------------------

def pick_format(config: dict, requested: str | None):
    if requested:
        fmt = FORMATS[requested]
        if not fmt.matches(config):
            raise ConversionError(f"config.json describes model_type {config.get('model_type')!r}, not {requested}; "
                                  f"supported: {', '.join(FORMATS)} (pass the matching --model-format)")
        return fmt
    for fmt in FORMATS.values():
        if fmt.matches(config):
            return fmt
    raise ConversionError(f"unsupported architecture: config.json has model_type {config.get('model_type')!r} and "
                          f"architectures {config.get('architectures')}; this converter reads "
                          f"{', '.join(FORMATS)} checkpoints")


def _check_hf_tensors(fmt, identity: ModelIdentity, weights: HFWeights) -> torch.dtype:
    """Names and shapes of every HF tensor against config.json, before anything is written.
    The expected ones come from the export map run on shape-only tensors (one source of truth)."""
    expected = {}
    for group in groups(identity):
        expected.update(weight_maps.hf_shapes(fmt.WEIGHTS, group, identity))
    missing = [n for n in expected if n not in weights]
    if missing:
        raise ConversionError(f"{len(missing)} tensors that config.json implies are not in {weights.directory} "
                              f"(first: {', '.join(missing[:3])}). The weight files are incomplete or belong to "
                              "another architecture")
    for name, shape in expected.items():
        if weights.shape(name) != shape:
            raise ConversionError(f"{name} in {weights.directory} has shape {list(weights.shape(name))}, but "
                                  f"config.json implies {list(shape)}. The weights and config.json disagree: use "
                                  "the config.json saved with these weights")
    for group in groups(identity):  # buffers (open_lm's rotary inv_freq) a source may carry: checked, not loaded
        for name, value in weight_maps.buffers(fmt.WEIGHTS, group, identity).items():
            if name in weights:
                expected[name] = tuple(value.shape)
                if not torch.equal(weights.get(name).float(), value):
                    raise ConversionError(f"{name} in {weights.directory} differs from the value config.json implies "
                                          f"(RoPE base {identity.rotary_base:g}); the model rotates differently "
                                          "from what this converter reproduces")
    unknown = [n for n in weights.names() if n not in expected and not fmt.ignorable(n, identity)]
    if unknown:
        raise ConversionError(f"{len(unknown)} tensors in {weights.directory} have no place in the {fmt.NAME} "
                              f"architecture (first: {', '.join(unknown[:3])}); the model has parts this "
                              "converter does not support")
    dtypes = {weights.dtype(n) for n in expected if not n.endswith("inv_freq")}
    return dtypes.pop() if len(dtypes) == 1 else torch.float32


def hf_to_megatron(hf_dir: str, save: str, model_format: str | None = None, overwrite: bool = False,
                   make_vocab_size_divisible_by: int | None = None, dtype: torch.dtype | None = None,
                   progress: bool = True) -> str:
    """Write a torch_dist checkpoint (iteration 0, model only) at `save`; returns its iteration dir.
    make_vocab_size_divisible_by: None keeps what an export recorded, else 128."""
    if not os.path.isdir(hf_dir):
        raise ConversionError(f"--hf {hf_dir} is not a directory; pass the Hugging Face checkpoint directory")
    config = read_json(os.path.join(hf_dir, "config.json"), "config file")
    fmt = pick_format(config, model_format)
    identity = restore_identity(fmt.identity_from_config(config), config, fmt.EXPRESSED)
    if make_vocab_size_divisible_by:
        identity = identity.replace(make_vocab_size_divisible_by=make_vocab_size_divisible_by)
    weights = HFWeights(hf_dir)
    stored_dtype = _check_hf_tensors(fmt, identity, weights)
    dtype = dtype or stored_dtype
    generation = os.path.join(hf_dir, "generation_config.json")
    # The run flags a --load of it needs, provenance, and the HF-only config fields (token ids, ...) an
    # export restores.
    args = dict(vocab_size=identity.vocab_size, seq_length=identity.max_position_embeddings,
                hf_model_format=fmt.NAME, hf_config=json.dumps(config, sort_keys=True),
                hf_generation_config=(json.dumps(read_json(generation, "generation config"), sort_keys=True)
                                      if os.path.isfile(generation) else None))
    tensor_groups = groups(identity)
    with staged_output(save, overwrite) as tmp:
        tokenizer_files = copy_tokenizer(hf_dir, os.path.join(tmp, "tokenizer"))
        if tokenizer_files:
            args.update(tokenizer_type="HuggingFaceTokenizer",
                        tokenizer_model=os.path.join(os.path.abspath(save), "tokenizer"))
            args.update(_vocabulary_padding(os.path.join(tmp, "tokenizer"), identity.vocab_size))
        else:
            print(f"warning: no tokenizer files in {hf_dir}; the checkpoint has none", file=sys.stderr)
        copy_remote_code(hf_dir, os.path.join(tmp, CODE_DIR))
        missing = [m for m in auto_map_modules(config) if not os.path.isfile(os.path.join(hf_dir, m))]
        if missing:
            print(f"warning: config.json's auto_map names {', '.join(missing)}, not in {hf_dir}; an export of "
                  "this checkpoint needs them to load with trust_remote_code=True", file=sys.stderr)
        common = {"iteration": 0, "consumed_samples": 0, "checkpoint_version": 1, "args": args,
                  CHECKPOINT_KEY: identity.to_checkpoint()}
        with _progress(len(tensor_groups), "HF -> Megatron", progress) as bar:
            def produce(group):
                tensors = weight_maps.to_megatron(fmt.WEIGHTS, group, identity, weights.get)
                weights.release()  # a group at a time: do not keep every page read so far mapped
                bar.update(1)
                return tensors

            TorchDistWriter(iteration_dir(tmp, 0)).save(tensor_groups, produce, dtype, identity.num_layers, common,
                                                         model_tensors(identity).extra_state_keys)
        write_checksums(iteration_dir(tmp, 0))
        write_text_atomic(os.path.join(tmp, LATEST_FILE), "0")
    return iteration_dir(os.path.abspath(save), 0)


# ---- Megatron -> Hugging Face ------------------------------------------------------------------

def _vocabulary_padding(tokenizer_dir: str, rows: int) -> dict:
    """{"vocab_pad_to": rows} when the model has more embedding rows than its tokenizer has ids (DCLM-1B: 50432
    rows, GPT-NeoX's 50277 ids), so a run loading the checkpoint pads its vocabulary to the same rows."""
    from megatron_ext.data.tokenizers import build_tokenizer

    try:
        ids = build_tokenizer("HuggingFaceTokenizer", tokenizer_dir).vocab_size
    except Exception:  # a tokenizer transformers cannot load is the run's problem, reported there
        return {}
    return {"vocab_pad_to": rows} if ids < rows else {}


def default_format(identity: ModelIdentity) -> str:
    """The HF layout an export uses unless --model-format says otherwise."""
    if identity.qk_norm == "full" or (identity.layer_norm and not identity.layernorm_bias):
        return hf_openlm.NAME
    return hf_crystalcoder.NAME if identity.layer_norm else hf_llama.NAME


def true_vocab_size(common: dict) -> int | None:
    """The vocabulary the run used (rows past it are padding). The model identity records it; checkpoints
    older than the identity record it for imports, and for training runs the tokenizer decides it (as
    pretrain_llama.py's build_vocab does)."""
    if common.get(CHECKPOINT_KEY):
        return common[CHECKPOINT_KEY].get("vocab_size")
    args = common["args"]
    if args.get("hf_config") and args.get("vocab_size"):
        return args["vocab_size"]
    try:
        from megatron_ext.data.build import build_vocab

        defaults = dict(mock_data=False, tokenizer_model=None, tokenizer_type="NullTokenizer", vocab_size=None)
        return build_vocab(Namespace(**{**defaults, **args}))[1]
    except (Exception, SystemExit):
        return args.get("vocab_size")


def megatron_to_hf(load: str, out: str, iteration: int | None = None, dtype: torch.dtype | None = None,
                   model_format: str | None = None, overwrite: bool = False, vocab_size: int | None = None,
                   max_shard_bytes: int = 5 * 2**30, progress: bool = True, chat_format: str | None = None) -> str:
    """CHAT_FORMAT: the chat template and end of reply to export (hf_tokenizer_export.py); None: the run's
    recorded --chat-format, "none": no template."""
    iteration, directory, common = read_common(load, iteration)
    try:
        verify_checksums(directory)  # a damaged shard would otherwise export as silently wrong weights
    except IntegrityError as exc:
        raise ConversionError(str(exc)) from None
    args = common["args"]
    vocab = vocab_size or true_vocab_size(common)
    if not vocab:
        raise ConversionError("cannot tell the vocabulary size (the run's tokenizer is not available); pass "
                              "--vocab-size N")
    try:
        stored = ModelIdentity.from_checkpoint(common)
    except SystemExit as exc:
        raise ConversionError(f"{directory}/common.pt: {str(exc).removeprefix('error: ')}") from None
    rows = stored.padded_vocab_size if stored.vocab_size else None
    if rows and vocab > rows:
        raise ConversionError(f"vocabulary size {vocab} exceeds the checkpoint's {rows} rows; "
                              "pass the --vocab-size of the tokenizer the model was trained with")
    identity = stored.replace(vocab_size=vocab)
    if rows and identity.padded_vocab_size != rows:  # a smaller --vocab-size: keep the stored rows' padding
        identity = identity.replace(make_vocab_size_divisible_by=rows)
    fmt = FORMATS[model_format or default_format(identity)]
    fmt.check_exportable(identity)
    tokenizer_export = hf_tokenizer_export.TokenizerExport(load, args, chat_format)
    reader = TorchDistReader(directory)
    tensor_groups = groups(identity)
    stored_dtype = reader.check(tensor_groups, identity.num_layers)
    dtype = dtype or stored_dtype
    # Plan every output tensor from shapes alone, so shard headers can be written before the data.
    entries, sizes = [], []
    for group in tensor_groups:
        planned = weight_maps.hf_shapes(fmt.WEIGHTS, group, identity, stored_dtype)
        entries += [(name, shape, dtype) for name, shape in planned.items()]
        held = weight_maps.buffers(fmt.WEIGHTS, group, identity)
        entries += [(name, tuple(value.shape), value.dtype) for name, value in held.items()]
        sizes.append(len(planned) + len(held))
    with staged_output(out, overwrite) as tmp:
        writer = SafetensorsStreamWriter(tmp, plan_shards(entries, sizes, max_shard_bytes))
        with _progress(len(tensor_groups), "Megatron -> HF", progress) as bar:
            for group in tensor_groups:
                tensors = reader.read(group, identity.num_layers)
                for name, tensor in weight_maps.to_hf(fmt.WEIGHTS, group, identity, tensors).items():
                    writer.write(name, tensor.to(dtype))
                for name, value in weight_maps.buffers(fmt.WEIGHTS, group, identity).items():
                    writer.write(name, value)
                bar.update(1)
        writer.close()
        fmt.write_config(identity, {k: v for k, v in args.items() if k.startswith("hf_")}, tmp, dtype)
        tokenizer_export.write(tmp)
        export_remote_code(load, args, tmp, os.path.abspath(out))
    return os.path.abspath(out)
