"""Streaming conversion between Hugging Face checkpoints and this project's torch_dist checkpoints.

Both directions move one group (the embedding, one layer, the final norm, the output layer) at a
time, so peak memory is about one layer, never the model.

torch_dist checkpoints are torch.distributed.checkpoint (DCP) directories plus megatron-core's
metadata.json and common.pt. Tensors are keyed by their global ShardedTensor key: per-layer
parameters are stacked along a leading layer axis (`decoder.layers.mlp.linear_fc1.weight`, global
shape [num_layers, 2F, H]) and each layer is one chunk, exactly as a TP1/PP1 run of pretrain_llama.py
saves them. Loading at any TP/PP layout reads the overlaps of its own shards with these chunks.

Writing: DCP's FileSystemWriter asks the planner for each item's data (`resolve_data`) just before
writing it, so the planner below computes a group's tensors on first request and drops them once
written. Two details keep that streaming: the plan is built from shapes alone (no tensor exists
before it is written), and every item goes to its own file (`single_file_per_rank=False`), because
torch keeps a reference to every tensor of a file until the file is closed.

Reading: a load planner asks DCP for one layer's slice of each stacked tensor, so only that slice is
read from disk.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import sys
from argparse import Namespace
from contextlib import contextmanager

import torch
from torch.distributed import checkpoint as dcp
from torch.distributed.checkpoint import (CheckpointException, DefaultSavePlanner, FileSystemReader,
                                          FileSystemWriter, LoadPlan, LoadPlanner, SavePlan)
from torch.distributed.checkpoint.metadata import (ChunkStorageMetadata, MetadataIndex, TensorProperties,
                                                   TensorStorageMetadata)
from torch.distributed.checkpoint.planner import TensorWriteData, WriteItem, WriteItemType
from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

from megatron_ext.checkpoint import hf_crystalcoder, hf_llama
from megatron_ext.checkpoint.hf_arch import (LINEAR_MODULES, ConversionError, Group, expect_shape, groups,
                                             meta_tensors, restore_identity)
from megatron_ext.checkpoint.hf_files import (HFWeights, SafetensorsStreamWriter, auto_map_modules,
                                              copy_remote_code, copy_tokenizer, plan_shards, read_json)
from megatron_ext.checkpoint.integrity import IntegrityError, verify_checksums, write_checksums
from megatron_ext.checkpoint.paths import LATEST_FILE, iteration_dir, read_latest_iteration, write_text_atomic
from megatron_ext.models.identity import CHECKPOINT_KEY, ModelIdentity

FORMATS = {hf_llama.NAME: hf_llama, hf_crystalcoder.NAME: hf_crystalcoder}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")
# Where an import keeps the source's remote code (configuration_*.py, modeling_*.py), next to tokenizer/.
CODE_DIR = "hf_code"


# ---- Megatron names <-> torch_dist keys ---------------------------------------------------------

def dcp_location(name: str, shape: tuple, num_layers: int) -> tuple[str, tuple, tuple]:
    """(key, global shape, chunk offsets) of a Megatron tensor in a torch_dist checkpoint."""
    match = _LAYER.match(name)
    if match is None:
        return name, tuple(shape), (0,) * len(shape)
    layer, rest = int(match.group(1)), match.group(2)
    return f"decoder.layers.{rest}", (num_layers, *shape), (layer,) + (0,) * len(shape)


def extra_state_keys(num_layers: int) -> list[str]:
    """Unique keys of the (empty) `_extra_state` objects megatron-core's linear layers save, one per
    layer; a model loading the checkpoint asks for them. Named by megatron-core's own ShardedObject
    so the naming always matches the installed version."""
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    return [ShardedObject(f"decoder.layers.{module}._extra_state", None, (num_layers,), (layer,)).unique_key
            for layer in range(num_layers) for module in LINEAR_MODULES]


# ---- writing a torch_dist checkpoint -------------------------------------------------------------

class _StreamingSavePlanner(DefaultSavePlanner):
    """Plans from precomputed write items; resolve_data produces each tensor on demand."""

    def __init__(self, items: list, resolve):
        super().__init__()
        self._items, self._resolve = items, resolve

    def create_local_plan(self) -> SavePlan:
        self.plan = SavePlan(self._items, planner_data={})  # no nested state dict to unflatten
        return self.plan

    def resolve_data(self, write_item):
        return self._resolve(write_item)


class TorchDistWriter:
    """Writes one iteration directory of a torch_dist checkpoint from groups produced lazily."""

    def __init__(self, directory: str):
        self.directory = directory

    def save(self, groups: list[Group], produce, dtype: torch.dtype, num_layers: int, common: dict) -> None:
        """produce(group) -> {Megatron name: tensor} for exactly group.shapes (checked)."""
        items, source = [], {}
        for group in groups:
            for name, shape in group.shapes.items():
                key, global_shape, offsets = dcp_location(name, shape, num_layers)
                chunk_sizes = (1, *shape) if len(global_shape) > len(shape) else tuple(shape)
                index = MetadataIndex(key, torch.Size(offsets))
                items.append(WriteItem(index=index, type=WriteItemType.SHARD, tensor_data=TensorWriteData(
                    chunk=ChunkStorageMetadata(offsets=torch.Size(offsets), sizes=torch.Size(chunk_sizes)),
                    properties=TensorProperties(dtype=dtype), size=torch.Size(global_shape))))
                source[index] = (group, name)
        empty_state = io.BytesIO()
        torch.save([None], empty_state)  # what megatron-core stores for an empty _extra_state
        objects = {key: empty_state.getvalue() for key in extra_state_keys(num_layers)}
        items += [WriteItem(index=MetadataIndex(key), type=WriteItemType.BYTE_IO) for key in objects]

        cache: dict = {}  # group name -> its not-yet-written tensors (one group at a time in practice)

        def resolve(item):
            if item.type == WriteItemType.BYTE_IO:
                return io.BytesIO(objects[item.index.fqn])
            group, name = source[item.index]
            if group.name not in cache:
                cache[group.name] = self._checked(group, produce(group), dtype)
            tensors = cache[group.name]
            tensor = tensors.pop(name)
            if not tensors:
                del cache[group.name]
            return tensor.unsqueeze(0) if group.layer is not None else tensor

        os.makedirs(self.directory, exist_ok=True)
        writer = FileSystemWriter(self.directory, single_file_per_rank=False, thread_count=1)
        dcp.save({}, storage_writer=writer, planner=_StreamingSavePlanner(items, resolve), no_dist=True)
        if cache:
            raise RuntimeError(f"tensors produced but never written: {sorted(cache)}")
        from megatron.core.dist_checkpointing.core import CheckpointingConfig, save_config

        save_config(CheckpointingConfig("torch_dist"), self.directory)  # metadata.json
        torch.save(common, os.path.join(self.directory, "common.pt"))

    @staticmethod
    def _checked(group: Group, tensors: dict, dtype: torch.dtype) -> dict:
        if set(tensors) != set(group.shapes):
            raise RuntimeError(f"{group.name}: produced {sorted(set(tensors) ^ set(group.shapes))} unexpectedly")
        for name, shape in group.shapes.items():
            expect_shape(name, tensors[name], shape, "the converted model")
        # contiguous: torch.save stores a view's whole storage, so a slice would write its parent.
        return {name: t.to(dtype).contiguous() for name, t in tensors.items()}


# ---- reading a torch_dist checkpoint -------------------------------------------------------------

class _RegionLoadPlanner(LoadPlanner):
    """Loads given regions of stored tensors into given destination tensors."""

    def __init__(self, regions: dict):
        self.regions = regions  # key -> (destination tensor, offsets of its region in the global tensor)

    def set_up_planner(self, state_dict, metadata=None, is_coordinator=False) -> None:
        self.metadata = metadata

    def create_local_plan(self) -> LoadPlan:
        items = []
        for key, (dest, offsets) in self.regions.items():
            chunk = ChunkStorageMetadata(offsets=torch.Size(offsets), sizes=dest.shape)
            items += create_read_items_for_chunk_list(key, self.metadata.state_dict_metadata[key], [chunk])
        return LoadPlan(items)

    def create_global_plan(self, global_plan):
        return global_plan

    def finish_plan(self, central_plan):
        return central_plan

    def load_bytes(self, read_item, value) -> None:
        raise RuntimeError(f"unexpected object read: {read_item.dest_index.fqn}")

    def resolve_tensor(self, read_item):
        tensor = self.regions[read_item.dest_index.fqn][0]
        for dim, (start, length) in enumerate(zip(read_item.dest_offsets, read_item.lengths)):
            tensor = tensor.narrow(dim, start, length)
        return tensor

    def commit_tensor(self, read_item, tensor) -> None:
        pass  # resolve_tensor returned a view of the destination: the data is already in place


def _brief(exc: BaseException) -> str:
    """One line for an exception (torch's messages run to paragraphs)."""
    if isinstance(exc, CheckpointException):  # failures: rank -> (exception, traceback frames)
        exc = next(iter(exc.failures.values()), (exc,))[0]
    line = (str(exc).strip().splitlines() or [""])[0]
    if len(line) > 120 and ". " in line:
        line = line.split(". ")[0]
    return f"{type(exc).__name__}: {line[:200]}"


class TorchDistReader:
    """Reads Megatron tensors (a group at a time) from one iteration directory."""

    def __init__(self, directory: str):
        self.directory = directory
        self._hint = (f"re-copy the checkpoint, or export another --iteration "
                      f"(found: {_iterations(os.path.dirname(directory)) or 'none'})")
        if not os.path.isfile(os.path.join(directory, ".metadata")):
            raise ConversionError(f"{directory} has no .metadata file: not a torch_dist checkpoint, or an "
                                  f"incomplete one; {self._hint}")
        try:
            self.metadata = FileSystemReader(directory).read_metadata()
        except Exception as exc:
            raise ConversionError(f"cannot read {os.path.join(directory, '.metadata')} ({_brief(exc)}): it is "
                                  f"truncated or corrupt; {self._hint}") from exc

    def _files(self, key: str, offsets=None, sizes=None) -> dict:
        """Relative path -> bytes the stored chunks of `key` (those overlapping the region, if given)
        need in it, from the storage index in .metadata."""
        files = {}
        for chunk in self.metadata.state_dict_metadata[key].chunks:
            if offsets is not None and not all(c < o + s and o < c + cs for c, cs, o, s in
                                               zip(chunk.offsets, chunk.sizes, offsets, sizes)):
                continue
            info = self.metadata.storage_data.get(MetadataIndex(key, chunk.offsets))
            if info is not None:
                files[info.relative_path] = max(files.get(info.relative_path, 0), info.offset + info.length)
        return files

    def check_files(self, keys) -> None:
        """Every data file holding the tensors is present and as long as .metadata records (a shard
        missing or cut short by an interrupted copy is refused before anything is written)."""
        for key in keys:
            for name, needed in sorted(self._files(key).items()):
                path = os.path.join(self.directory, name)
                if not os.path.isfile(path):
                    raise ConversionError(f"{path} is missing (it holds {key}): the checkpoint is incomplete; "
                                          f"{self._hint}")
                size = os.path.getsize(path)
                if size < needed:
                    raise ConversionError(f"{path} is truncated ({size} bytes, .metadata records {needed}; it "
                                          f"holds {key}); {self._hint}")

    def check(self, groups: list[Group], num_layers: int) -> torch.dtype:
        """Every tensor the config implies is stored with the implied shape; returns the stored dtype."""
        stored = self.metadata.state_dict_metadata
        dtypes = set()
        for group in groups:
            for name, shape in group.shapes.items():
                key, global_shape, _ = dcp_location(name, shape, num_layers)
                md = stored.get(key)
                if not isinstance(md, TensorStorageMetadata):
                    raise ConversionError(f"{self.directory} has no tensor {key}, which the checkpoint's args imply "
                                          f"({group.name}). The args and weights disagree; is the checkpoint complete?")
                if tuple(md.size) != tuple(global_shape):
                    raise ConversionError(f"{key} in {self.directory} has shape {list(md.size)} but the checkpoint's "
                                          f"args imply {list(global_shape)}; the args and weights disagree")
                dtypes.add(md.properties.dtype)
        self.check_files(dcp_location(name, shape, num_layers)[0] for group in groups for name, shape in
                         group.shapes.items())
        return torch.float32 if len(dtypes) != 1 else dtypes.pop()

    def read(self, group: Group, num_layers: int) -> dict:
        out, regions = {}, {}
        for name, shape in group.shapes.items():
            key, global_shape, offsets = dcp_location(name, shape, num_layers)
            dtype = self.metadata.state_dict_metadata[key].properties.dtype
            region = (1, *shape) if len(global_shape) > len(shape) else tuple(shape)
            buffer = torch.empty(region, dtype=dtype)
            regions[key] = (buffer, offsets)
            out[name] = buffer[0] if len(region) > len(shape) else buffer
        try:
            self._load(regions)
        except (Exception, CheckpointException) as exc:  # a shard corrupt in a way its size does not show
            key = next((k for k in regions if not self._loads({k: regions[k]})), None)
            where = (f"{key} from {', '.join(sorted(self._files(key, regions[key][1], regions[key][0].shape)))}"
                     if key else f"{group.name}")
            raise ConversionError(f"cannot read {where} in {self.directory} ({_brief(exc)}): the file is "
                                  f"corrupt; {self._hint}") from exc
        return out

    def _load(self, regions: dict) -> None:
        dcp.load({}, storage_reader=FileSystemReader(self.directory), planner=_RegionLoadPlanner(regions),
                 no_dist=True)

    def _loads(self, regions: dict) -> bool:
        """Whether these regions read (to find the bad file after a failed read)."""
        try:
            self._load(regions)
            return True
        except (Exception, CheckpointException):
            return False


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
        expected.update({n: tuple(t.shape) for n, t in fmt.to_hf(group, identity, meta_tensors(group.shapes)).items()})
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
    unknown = [n for n in weights.names() if n not in expected and not fmt.ignorable(n, identity)]
    if unknown:
        raise ConversionError(f"{len(unknown)} tensors in {weights.directory} have no place in the {fmt.NAME} "
                              f"architecture (first: {', '.join(unknown[:3])}); the model has parts this "
                              "converter does not support")
    dtypes = {weights.dtype(n) for n in expected}
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
                tensors = fmt.to_megatron(group, identity, weights.get)
                weights.release()  # a group at a time: do not keep every page read so far mapped
                bar.update(1)
                return tensors

            TorchDistWriter(iteration_dir(tmp, 0)).save(tensor_groups, produce, dtype, identity.num_layers, common)
        write_checksums(iteration_dir(tmp, 0))
        write_text_atomic(os.path.join(tmp, LATEST_FILE), "0")
    return iteration_dir(os.path.abspath(save), 0)


# ---- Megatron -> Hugging Face ------------------------------------------------------------------

def read_common(root: str, iteration: int | None) -> tuple[int, str, dict]:
    if not os.path.isdir(root):
        raise ConversionError(f"--load {root} is not a directory; pass the directory given to pretrain_llama.py "
                              "--save or tools/convert_from_hf.py --save")
    found = _iterations(root) or "none"
    if iteration is None:
        if not os.path.isfile(os.path.join(root, LATEST_FILE)) and found != "none":
            raise ConversionError(f"--load {root} has no {LATEST_FILE}, so the latest iteration is unknown; "
                                  f"pass --iteration N (found: {found})")
        iteration = read_latest_iteration(root)
        named = f"{LATEST_FILE} names iteration {iteration}, but"
    else:
        named = f"--iteration {iteration}:"
    directory = iteration_dir(root, iteration)
    if not os.path.isdir(directory):
        raise ConversionError(f"{named} {directory} does not exist; pass --iteration with one that does "
                              f"(found: {found})")
    path = os.path.join(directory, "common.pt")
    if not os.path.isfile(path):
        raise ConversionError(f"{path} is missing: {directory} is not a complete checkpoint of this project. "
                              f"Pass --iteration with one that is (found: {found})")
    try:
        common = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConversionError(f"cannot read {path}: {type(exc).__name__}: {exc}. It may be truncated; "
                              "load another --iteration") from exc
    if not isinstance(common.get("args"), dict):
        raise ConversionError(f"{path} records no args; only checkpoints written by pretrain_llama.py or "
                              "tools/convert_from_hf.py can be converted")
    return iteration, directory, common


def _iterations(root: str) -> str:
    if not os.path.isdir(root):
        return ""
    return ", ".join(str(n) for n in sorted(int(name[len("iter_"):]) for name in os.listdir(root)
                                            if re.fullmatch(r"iter_\d{7}", name)))


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
                   max_shard_bytes: int = 5 * 2**30, progress: bool = True) -> str:
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
    fmt = FORMATS[model_format or (hf_llama.NAME if not identity.layer_norm else hf_crystalcoder.NAME)]
    fmt.check_exportable(identity)
    reader = TorchDistReader(directory)
    tensor_groups = groups(identity)
    stored_dtype = reader.check(tensor_groups, identity.num_layers)
    dtype = dtype or stored_dtype
    # Plan every output tensor from shapes alone, so shard headers can be written before the data.
    entries, sizes = [], []
    for group in tensor_groups:
        planned = fmt.to_hf(group, identity, meta_tensors(group.shapes, stored_dtype))
        entries += [(name, tuple(t.shape), dtype) for name, t in planned.items()]
        sizes.append(len(planned))
    with staged_output(out, overwrite) as tmp:
        writer = SafetensorsStreamWriter(tmp, plan_shards(entries, sizes, max_shard_bytes))
        with _progress(len(tensor_groups), "Megatron -> HF", progress) as bar:
            for group in tensor_groups:
                for name, tensor in fmt.to_hf(group, identity, reader.read(group, identity.num_layers)).items():
                    writer.write(name, tensor.to(dtype))
                bar.update(1)
        writer.close()
        fmt.write_config(identity, {k: v for k, v in args.items() if k.startswith("hf_")}, tmp, dtype)
        _export_tokenizer(load, args, tmp)
        _export_remote_code(load, args, tmp, os.path.abspath(out))
    return os.path.abspath(out)


def _export_tokenizer(root: str, args: dict, out: str) -> None:
    copied = copy_tokenizer(os.path.join(root, "tokenizer"), out)
    model = args.get("tokenizer_model")
    if not copied and model and os.path.isdir(model):
        copied = copy_tokenizer(model, out)
    elif not copied and model and os.path.isfile(model):
        copied = _sentencepiece_tokenizer(model, out)
    if not copied:
        print("warning: the checkpoint has no tokenizer (mock data or a missing tokenizer file); the export has "
              "none: add the tokenizer files to the output directory", file=sys.stderr)


def _export_remote_code(root: str, args: dict, tmp: str, out: str) -> None:
    """The modules the written config.json's auto_map points to (CrystalCoder's configuration and
    modeling code), from the import's hf_code/ (or, for a run that saved elsewhere, next to the
    tokenizer it trained with). Without them the weights are still written, with a warning."""
    needed = auto_map_modules(read_json(os.path.join(tmp, "config.json"), "config file"))
    if not needed:
        return
    model = args.get("tokenizer_model")
    sources = [os.path.join(root, CODE_DIR)]
    if model and os.path.isdir(model):  # the imported checkpoint's tokenizer/ (or an HF directory itself)
        sources += [model, os.path.join(os.path.dirname(os.path.normpath(model)), CODE_DIR)]
    for source in sources:
        if copy_remote_code(source, tmp):
            break
    missing = [m for m in needed if not os.path.isfile(os.path.join(tmp, m))]
    if missing:
        whose = ("CrystalCoder's modeling files (from its Hugging Face repository, e.g. LLM360/CrystalCoder)"
                 if "crystalcoder" in " ".join(missing) else "the model's modeling files")
        print(f"warning: {out}/config.json's auto_map needs {', '.join(missing)}, which the checkpoint does not "
              f"carry: the weights are written, but the model loads with trust_remote_code=True only after you "
              f"copy {whose} into {out}", file=sys.stderr)


def _sentencepiece_tokenizer(model: str, out: str) -> list[str]:
    """The run's SentencePiece .model as LLaMA checkpoints ship it: tokenizer.model, plus the
    tokenizer.json/tokenizer_config.json transformers converts it to (so AutoTokenizer loads it)."""
    shutil.copy2(model, os.path.join(out, "tokenizer.model"))
    try:
        from transformers import LlamaTokenizer

        LlamaTokenizer.from_pretrained(out).save_pretrained(out)
    except Exception as exc:  # tokenizer.model alone still serves SentencePiece users
        print(f"warning: transformers could not convert {model} ({exc}); the export has tokenizer.model only",
              file=sys.stderr)
    return ["tokenizer.model"]
