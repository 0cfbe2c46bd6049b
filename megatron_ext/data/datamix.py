"""Datamix files: the sources of a training mixture in one JSON file.

    {"data_root": "$DATA_ROOT",            # optional; default $DATA_ROOT
     "sources": [
        {"name": "starcoder", "prefix": "starcoder/starcoder_text_document",
         "weight": 0.628, "fim_rate": 0.9, "fim_spm_rate": 0.5},
        {"name": "c4", "prefix": "slimpajama/c4_text_document", "tokens": 197.67e9},
        ...]}

Each source gives either ``weight`` or ``tokens`` (all sources the same kind);
token counts are normalised to weights (the sampling probability of a source is
its share of the tokens, as Amber's mix is published).  A relative prefix is
joined to ``data_root`` after expanding environment variables, so one file
serves every cluster.  FIM rates default to 0.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from megatron_ext.data.fim import FIMRates

_SOURCE_KEYS = {"name", "prefix", "weight", "tokens", "fim_rate", "fim_spm_rate", "comment"}


@dataclass(frozen=True)
class Source:
    name: str
    prefix: str
    weight: float
    fim: FIMRates


@dataclass(frozen=True)
class DataMix:
    path: str
    sources: tuple[Source, ...]

    def data_path(self) -> list[str]:
        """Megatron-LM's --data-path form: ["w1", "prefix1", "w2", "prefix2", ...]."""
        # 12 significant digits: exact enough, and "0.6" rather than "0.6000000000000001".
        return [x for s in self.sources for x in (f"{s.weight:.12g}", s.prefix)]

    def fim_rates(self) -> list[FIMRates]:
        """Per source, in blend order (= megatron-core's dataset_id)."""
        return [s.fim for s in self.sources]


class DataMixError(ValueError):
    pass


def load_data_mix(path: str, data_root: str | None = None) -> DataMix:
    try:
        with open(path, encoding="utf-8") as f:
            spec = json.load(f)
    except FileNotFoundError:
        raise DataMixError(f"--data-mix {path} not found") from None
    except json.JSONDecodeError as err:
        raise DataMixError(f"--data-mix {path}: not valid JSON ({err})") from None
    sources = spec.get("sources") if isinstance(spec, dict) else None
    if not sources or not isinstance(sources, list):
        raise DataMixError(f"--data-mix {path}: needs a non-empty \"sources\" list")

    root = data_root if data_root is not None else spec.get("data_root", "$DATA_ROOT")
    root = os.path.expandvars(root) if root else ""
    if root.startswith("$"):  # variable not set: leave relative prefixes relative
        root = ""
    kinds, raw, names = set(), [], set()
    for i, s in enumerate(sources):
        where = f"--data-mix {path}: source {i} ({s.get('name', '?') if isinstance(s, dict) else s})"
        if not isinstance(s, dict) or "prefix" not in s:
            raise DataMixError(f"{where}: needs at least a \"prefix\"")
        unknown = set(s) - _SOURCE_KEYS
        if unknown:
            raise DataMixError(f"{where}: unknown keys {sorted(unknown)}; allowed {sorted(_SOURCE_KEYS)}")
        kind = [k for k in ("weight", "tokens") if k in s]
        if len(kind) != 1:
            raise DataMixError(f"{where}: give exactly one of \"weight\" or \"tokens\"")
        kinds.add(kind[0])
        amount = float(s[kind[0]])
        if amount <= 0:
            raise DataMixError(f"{where}: {kind[0]} must be positive")
        name = str(s.get("name", f"source{i}"))
        if name in names:
            raise DataMixError(f"{where}: duplicate name {name!r}")
        names.add(name)
        try:
            fim = FIMRates(float(s.get("fim_rate", 0.0)), float(s.get("fim_spm_rate", 0.0)))
        except ValueError as err:
            raise DataMixError(f"{where}: {err}") from None
        prefix = os.path.expandvars(s["prefix"])
        if root and not os.path.isabs(prefix):
            prefix = os.path.join(root, prefix)
        raw.append((name, prefix, amount, fim))
    if len(kinds) > 1:
        raise DataMixError(f"--data-mix {path}: mixes \"weight\" and \"tokens\"; use one kind")
    total = sum(a for _, _, a, _ in raw)
    return DataMix(path, tuple(Source(n, p, a / total, f) for n, p, a, f in raw))
