"""Hugging Face checkpoint directories: read tensors one at a time, write sharded safetensors as a
stream, carry the tokenizer and the publisher's remote code (configuration_*.py, modeling_*.py) across.

Reading never loads a whole shard: safetensors files are opened with safe_open (each get_tensor
reads one tensor), .bin files with torch.load(mmap=True, weights_only=True), which maps the file
and pages in only the tensors that are touched.

Writing streams too. A safetensors file is an 8-byte header length, a JSON header giving every
tensor's dtype, shape and byte range, then the raw bytes in that order. The converter knows every
output tensor's shape before computing any (it plans on shape-only tensors), so it writes a shard's
header first and then appends each tensor as it is produced; nothing else is held in memory.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import sys

import torch

from megatron_ext.checkpoint.hf_arch import ConversionError

# Where an import keeps the source's remote code (configuration_*.py, modeling_*.py), next to tokenizer/.
CODE_DIR = "hf_code"
SAFE_INDEX, BIN_INDEX = "model.safetensors.index.json", "pytorch_model.bin.index.json"
SAFE_SINGLE, BIN_SINGLE = "model.safetensors", "pytorch_model.bin"

# safetensors' dtype names (its format documentation).
_ST_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
              torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
              torch.bool: "BOOL"}

# Files a tokenizer may consist of (Hugging Face or SentencePiece); copied both ways unchanged.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt", "chat_template.jinja",
                   "chat_template.json")


def _is_tokenizer_file(name: str) -> bool:
    # tokenization_*.py: publisher code that tokenizer_config.json's auto_map points to (CrystalCoder).
    return name in TOKENIZER_FILES or name.endswith(".tiktoken") or (
        name.startswith("tokenization_") and name.endswith(".py"))


def _is_remote_code_file(name: str) -> bool:
    # The modules config.json's auto_map points to (CrystalCoder: configuration_crystalcoder.py,
    # modeling_crystalcoder.py); transformers runs them with trust_remote_code=True.
    return name.endswith(".py") and name.startswith(("configuration_", "modeling_"))


def auto_map_modules(config: dict) -> list[str]:
    """File names of the local modules config.json's auto_map refers to ("module.Class" -> module.py).
    References into another repository ("org/repo--module.Class") are fetched by transformers itself."""
    refs = []
    for value in (config.get("auto_map") or {}).values():
        refs += value if isinstance(value, (list, tuple)) else [value]
    return sorted({ref.rsplit(".", 1)[0] + ".py" for ref in refs
                   if isinstance(ref, str) and "." in ref and "--" not in ref})


def read_json(path: str, what: str) -> dict:
    if not os.path.isfile(path):
        raise ConversionError(f"{what} {path} is missing. A Hugging Face checkpoint directory needs config.json "
                              "next to its weights: download the full model repository (or save it with "
                              "save_pretrained)")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise ConversionError(f"{path} is not valid JSON ({exc}); re-download it") from exc


class HFWeights:
    """Tensor name -> tensor, read lazily from a Hugging Face checkpoint's weight files."""

    def __init__(self, directory: str):
        self.directory = directory
        self._file_of = self._index(directory)  # name -> file name
        self._open: dict = {}

    @staticmethod
    def _index(directory: str) -> dict:
        for index_name in (SAFE_INDEX, BIN_INDEX):
            path = os.path.join(directory, index_name)
            if os.path.isfile(path):
                weight_map = read_json(path, "weight index").get("weight_map")
                if not isinstance(weight_map, dict):
                    raise ConversionError(f"{path} has no weight_map; re-download the checkpoint")
                missing = sorted({f for f in weight_map.values() if not os.path.isfile(os.path.join(directory, f))})
                if missing:
                    raise ConversionError(f"{path} lists weight files that are missing: {', '.join(missing[:5])}"
                                          f"{' ...' if len(missing) > 5 else ''}; download them (the checkpoint is "
                                          "incomplete)")
                return dict(weight_map)
        for single in (SAFE_SINGLE, BIN_SINGLE):
            if os.path.isfile(os.path.join(directory, single)):
                return {name: single for name in HFWeights._names_in(os.path.join(directory, single))}
        raise ConversionError(f"no weights in {directory}: expected {SAFE_INDEX}, {BIN_INDEX}, {SAFE_SINGLE} or "
                              f"{BIN_SINGLE}. Download the weight files too, or point --hf at the directory that "
                              "holds them")

    @staticmethod
    def _names_in(path: str) -> list[str]:
        if path.endswith(".safetensors"):
            with _safe_open(path) as f:
                return list(f.keys())
        return list(_load_bin(path).keys())

    def names(self) -> list[str]:
        return list(self._file_of)

    def __contains__(self, name: str) -> bool:
        return name in self._file_of

    def _handle(self, file: str):
        if file not in self._open:
            path = os.path.join(self.directory, file)
            if file.endswith(".safetensors"):
                self._open[file] = _safe_open(path)
            else:
                self._open[file] = _load_bin(path)
        return self._open[file]

    def release(self) -> None:
        """Close the open files. Tensors read so far stay valid (safetensors copies them out, and a
        mapped .bin stays mapped while its tensors live); the file pages they were read through no
        longer count as this process's memory."""
        self._open.clear()

    def get(self, name: str) -> torch.Tensor:
        if name not in self._file_of:
            raise ConversionError(f"tensor {name} is not in the checkpoint {self.directory}. The weights do not "
                                  "match config.json (another architecture or a truncated download?)")
        handle = self._handle(self._file_of[name])
        if isinstance(handle, dict):
            return handle[name]
        return handle.get_tensor(name)

    def shape(self, name: str) -> tuple:
        handle = self._handle(self._file_of[name])
        if isinstance(handle, dict):
            return tuple(handle[name].shape)
        return tuple(handle.get_slice(name).get_shape())

    def dtype(self, name: str) -> torch.dtype:
        handle = self._handle(self._file_of[name])
        if isinstance(handle, dict):
            return handle[name].dtype
        return {v: k for k, v in _ST_DTYPES.items()}[handle.get_slice(name).get_dtype()]


def _safe_open(path: str):
    """safe_open, which checks the header against the file's size (a truncated download fails here)."""
    from safetensors import safe_open

    try:
        return safe_open(path, framework="pt")
    except Exception as exc:  # SafetensorError: bad header, file shorter than the header says
        raise ConversionError(f"cannot read {path}: {type(exc).__name__}: {exc}. The file is truncated or "
                              "corrupt; re-download it") from exc


def _load_bin(path: str) -> dict:
    """A PyTorch .bin state dict, memory-mapped where the file format allows (zip files, torch >= 1.6)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc):
            raise ConversionError(f"cannot read {path}: {exc}. It may be truncated or not a weights-only "
                                  "state dict; re-download it") from exc
        # Legacy (pre-zip) format: cannot be mapped, so this shard is read whole.
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors: weights_only refuses arbitrary objects
        raise ConversionError(f"cannot read {path}: {type(exc).__name__}: {exc}. Only weights-only .bin "
                              "files are loaded (no arbitrary pickles); convert it to safetensors") from exc


# ---- writing ----------------------------------------------------------------------------------

def plan_shards(entries: list[tuple[str, tuple, torch.dtype]], group_sizes: list[int], max_shard_bytes: int):
    """Split the output into shard files of whole groups, about max_shard_bytes each.

    entries: (name, shape, dtype) in writing order; group_sizes: how many consecutive entries form
    each group. Returns a list of shards, each a list of entries."""
    shards, current, current_bytes, start = [], [], 0, 0
    for count in group_sizes:
        group = entries[start:start + count]
        start += count
        size = sum(_nbytes(shape, dtype) for _, shape, dtype in group)
        if current and current_bytes + size > max_shard_bytes:
            shards.append(current)
            current, current_bytes = [], 0
        current += group
        current_bytes += size
    if current:
        shards.append(current)
    return shards


def _nbytes(shape, dtype) -> int:
    n = 1
    for s in shape:
        n *= s
    return n * torch.empty((), dtype=dtype).element_size()


class SafetensorsStreamWriter:
    """Writes planned shards in order; each tensor goes to disk as soon as it is given."""

    def __init__(self, directory: str, shards: list):
        self.directory = directory
        self.shards = shards
        self.names = [self._file_name(i) for i in range(len(shards))]
        self._queue = [(i, entry) for i, shard in enumerate(shards) for entry in shard]
        self._position = 0
        self._file = None
        self._file_index = -1

    def _file_name(self, i: int) -> str:
        if len(self.shards) == 1:
            return SAFE_SINGLE
        return f"model-{i + 1:05d}-of-{len(self.shards):05d}.safetensors"

    def _open_shard(self, i: int) -> None:
        if self._file is not None:
            self._file.close()
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for name, shape, dtype in self.shards[i]:
            size = _nbytes(shape, dtype)
            header[name] = {"dtype": _ST_DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
            offset += size
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)  # the format pads the header to 8-byte alignment
        self._file = open(os.path.join(self.directory, self.names[i]), "wb")
        self._file.write(struct.pack("<Q", len(blob)))
        self._file.write(blob)
        self._file_index = i

    def write(self, name: str, tensor: torch.Tensor) -> None:
        if self._position >= len(self._queue):
            raise RuntimeError(f"{name}: more tensors than planned")
        shard, (expected, shape, dtype) = self._queue[self._position]
        if name != expected or tuple(tensor.shape) != tuple(shape) or tensor.dtype != dtype:
            raise RuntimeError(f"planned {expected} {list(shape)} {dtype}, got {name} {list(tensor.shape)} "
                               f"{tensor.dtype}")
        if shard != self._file_index:
            self._open_shard(shard)
        data = tensor.detach().contiguous().cpu().reshape(-1).view(torch.uint8)
        self._file.write(memoryview(data.numpy()))  # no intermediate bytes copy
        self._position += 1

    def close(self) -> None:
        if self._position != len(self._queue):
            missing = [e[0] for _, e in self._queue[self._position:self._position + 3]]
            raise RuntimeError(f"not all planned tensors were written (next: {missing})")
        if self._file is not None:
            self._file.close()
        total = sum(_nbytes(shape, dtype) for shard in self.shards for _, shape, dtype in shard)
        if len(self.shards) > 1:  # transformers reads the index to find each tensor's shard
            weight_map = {name: self.names[i] for i, shard in enumerate(self.shards) for name, _, _ in shard}
            with open(os.path.join(self.directory, SAFE_INDEX), "w") as f:
                json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
                f.write("\n")


def copy_tokenizer(source_dir: str, dest_dir: str) -> list[str]:
    """Copy the tokenizer files found in source_dir; returns their names (empty: none found)."""
    return _copy_files(source_dir, dest_dir, _is_tokenizer_file)


def copy_remote_code(source_dir: str, dest_dir: str) -> list[str]:
    """Copy the configuration_*.py / modeling_*.py files found in source_dir; returns their names."""
    return _copy_files(source_dir, dest_dir, _is_remote_code_file)


def _copy_files(source_dir: str, dest_dir: str, wanted) -> list[str]:
    if not source_dir or not os.path.isdir(source_dir):
        return []
    names = sorted(n for n in os.listdir(source_dir) if wanted(n) and os.path.isfile(os.path.join(source_dir, n)))
    if names:
        os.makedirs(dest_dir, exist_ok=True)
        for name in names:
            shutil.copy2(os.path.join(source_dir, name), os.path.join(dest_dir, name))
    return names


# ---- an export's tokenizer and remote code ------------------------------------------------------

def export_tokenizer(root: str, args: dict, out: str) -> None:
    """The checkpoint's tokenizer/ (an import's copy), else the run's --tokenizer-model, into the export."""
    copied = copy_tokenizer(os.path.join(root, "tokenizer"), out)
    model = args.get("tokenizer_model")
    if not copied and model and os.path.isdir(model):
        copied = copy_tokenizer(model, out)
    elif not copied and model and os.path.isfile(model):
        copied = _sentencepiece_tokenizer(model, out)
    if not copied:
        print("warning: the checkpoint has no tokenizer (mock data or a missing tokenizer file); the export has "
              "none: add the tokenizer files to the output directory", file=sys.stderr)


def export_remote_code(root: str, args: dict, tmp: str, out: str) -> None:
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
    """The run's SentencePiece .model as LLaMA checkpoints ship it (tokenizer.model), plus the tokenizer.json
    that encodes as sentencepiece does (hf_tokenizer_export.py), so AutoTokenizer loads it."""
    from megatron_ext.checkpoint.hf_tokenizer_export import write_tokenizer
    from megatron_ext.data.tokenizers import SentencePieceTokenizer

    try:
        return write_tokenizer(SentencePieceTokenizer(model), out)
    except Exception as exc:  # tokenizer.model alone still serves SentencePiece users
        shutil.copy2(model, os.path.join(out, "tokenizer.model"))
        print(f"warning: could not write {model} in transformers' format ({exc}); the export has tokenizer.model "
              "only", file=sys.stderr)
        return ["tokenizer.model"]
