"""Datamix files: parsing, shipped mixes, realised mixture, per-source FIM through build.py."""

import json
from argparse import Namespace
from collections import Counter
from pathlib import Path

import numpy
import pytest

from megatron_ext.arguments import build_parser
from megatron_ext.data.build import build_datasets, build_vocab
from megatron_ext.data.datamix import DataMixError, load_data_mix
from megatron_ext.data.preprocess import preprocess_jsonl

REPO = Path(__file__).resolve().parents[2]
VOCAB = 1000  # NullTokenizer ids 0..999, EOD 1000; crystal specials from 1001


def _dataset(tmp, name, band, rng, docs=60):
    path = tmp / f"{name}.jsonl"
    with open(path, "w") as f:
        for _ in range(docs):
            ids = rng.integers(band, band + 100, int(rng.integers(20, 60)))
            f.write(json.dumps({"text": " ".join(map(str, ids))}) + "\n")
    prefixes, _ = preprocess_jsonl(str(path), str(tmp / name), tokenizer_type="NullTokenizer",
                                   vocab_size=VOCAB, append_eod=True, progress=False)
    return prefixes["text"]


@pytest.fixture(scope="module")
def mix(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mix")
    rng = numpy.random.default_rng(0)
    for name, band in (("code", 0), ("web", 100), ("books", 200)):
        _dataset(tmp, name, band, rng)
    spec = {"sources": [
        {"name": "code", "prefix": "code_text_document", "weight": 0.6, "fim_rate": 0.9,
         "fim_spm_rate": 0.5},
        {"name": "web", "prefix": "web_text_document", "weight": 0.3},
        {"name": "books", "prefix": "books_text_document", "weight": 0.1}]}
    path = tmp / "mix.json"
    path.write_text(json.dumps(spec))
    return tmp, str(path)


def test_shipped_mixes_load(monkeypatch):
    monkeypatch.setenv("DATA_ROOT", "/data")
    crystal = load_data_mix(str(REPO / "data/mixes/crystal_phase2.json"))
    by_name = {s.name: s for s in crystal.sources}
    assert abs(sum(s.weight for s in crystal.sources) - 1) < 1e-9
    assert abs(by_name["starcoder"].weight - 0.628) < 1e-3
    assert (by_name["starcoder"].fim.fim_rate, by_name["starcoder"].fim.spm_rate) == (0.9, 0.5)
    assert by_name["slimpajama_c4"].fim.fim_rate == 0
    assert by_name["starcoder"].prefix == "/data/starcoder/starcoder_text_document"
    amber = {s.name: s.weight for s in load_data_mix(str(REPO / "data/mixes/amber.json")).sources}
    assert abs(amber["refinedweb"] - 665.01 / 1259.13) < 1e-4  # token counts -> shares (published total rounds)


def test_bad_mixes_are_clear_errors(tmp_path):
    def check(spec, match):
        p = tmp_path / "m.json"
        p.write_text(json.dumps(spec))
        with pytest.raises(DataMixError, match=match):
            load_data_mix(str(p))
    check({"sources": []}, "non-empty")
    check({"sources": [{"prefix": "a", "weight": 1, "tokens": 3}]}, "exactly one")
    check({"sources": [{"prefix": "a", "weight": 1}, {"prefix": "b", "tokens": 3}]}, "one kind")
    check({"sources": [{"prefix": "a", "weight": 1, "fim_rate": 2}]}, "fim_rate")
    check({"sources": [{"prefix": "a", "weight": 1, "fim": 0.5}]}, "unknown keys")
    with pytest.raises(DataMixError, match="not found"):
        load_data_mix(str(tmp_path / "none.json"))


def _args(tmp, argv, train_iters=750):
    # The data flags as pretrain_llama.py parses them, plus the few others build.py reads.
    parsed = build_parser().parse_args(argv + ["--tokenizer-type", "NullTokenizer"])
    return Namespace(**{**vars(parsed), "vocab_size": VOCAB, "seq_length": 32, "seed": 5,
                        "train_iters": train_iters, "global_batch_size": 4, "eval_interval": 0,
                        "eval_iters": 0, "split": "100,0,0", "data_cache_path": str(tmp / "cache")})


def test_data_mix_flag_fills_data_path_and_excludes_it(mix, monkeypatch, capsys):
    tmp, path = mix
    monkeypatch.setenv("DATA_ROOT", str(tmp))
    args = build_parser().parse_args(["--data-mix", path])
    assert args.data_path == ["0.6", str(tmp / "code_text_document"), "0.3",
                              str(tmp / "web_text_document"), "0.1", str(tmp / "books_text_document")]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--data-path", "x", "--data-mix", path])
    assert "alternatives" in capsys.readouterr().err


def test_realised_mixture_matches_weights_and_fim_is_per_source(mix, monkeypatch):
    tmp, path = mix
    monkeypatch.setenv("DATA_ROOT", str(tmp))
    args = _args(tmp, ["--data-mix", path, "--special-tokens", "crystal", "--fim-split", "token"])
    tokenizer, vocab = build_vocab(args)
    assert vocab == 1024  # 1001 + 22 specials, padded to a multiple of 32
    train, _ = build_datasets(args, args, args, tokenizer, vocab)  # the flags hold all three configs' fields
    n = 3000
    assert len(train) >= n  # megatron-core adds a small margin
    fim_prefix = tokenizer.special_token_ids["<|fim_prefix|>"]
    counts, with_fim = Counter(), Counter()
    for i in range(n):
        s = train[i]
        source = int(s["dataset_id"])
        counts[source] += 1
        with_fim[source] += int((s["tokens"] == fim_prefix).any())
        # Tokens from a source's own id band (code 0-99, web 100-199, books 200-299).
        band = {t // 100 for t in s["tokens"].tolist() if t < VOCAB}
        assert band == {source}
    # megatron-core's blend picks, at every index, the source furthest below its
    # target share, so the realised shares are within a few samples of the
    # weights; 0.01 leaves room for rounding at n = 3000.
    for source, weight in enumerate((0.6, 0.3, 0.1)):
        assert abs(counts[source] / n - weight) < 0.01
    # Code gets FIM (almost every 32-token window holds a FIM'd document), the rest never; the rate
    # itself is measured in test_fim_rates_are_realised_per_source_through_build_py.
    assert with_fim[0] / counts[0] > 0.9 and with_fim[1] == with_fim[2] == 0


# name -> (FIM rate, SPM rate); "plain" has none. Equal weights, so each source fills ~1000 windows.
FIM_SOURCES = {"low": (0.1, 0.0), "half": (0.5, 1.0), "high": (0.9, 0.5), "plain": (0.0, 0.0)}


@pytest.fixture(scope="module")
def fim_mix(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fim_mix")
    rng = numpy.random.default_rng(1)
    sources = []
    for band, (name, (fim, spm)) in enumerate(FIM_SOURCES.items()):
        _dataset(tmp, name, 100 * band, rng, docs=120)
        sources.append({"name": name, "prefix": f"{name}_text_document", "weight": 0.25, "fim_rate": fim,
                        "fim_spm_rate": spm})
    path = tmp / "mix.json"
    path.write_text(json.dumps({"sources": sources}))
    return tmp, str(path)


def test_fim_rates_are_realised_per_source_through_build_py(fim_mix, monkeypatch):
    """The datasets the trainer builds (build_datasets with --data-mix) rearrange each source's documents
    at that source's FIM rate, in SPM at its SPM rate: observed counts within a binomial bound (4.5 sd)
    of the configured rates 0.1, 0.5 and 0.9. Counted on the first document of each window (the first one
    the transform decides on, whatever came before): it is FIM'd iff the window starts with <fim_prefix>."""
    tmp, path = fim_mix
    monkeypatch.setenv("DATA_ROOT", str(tmp))
    args = _args(tmp, ["--data-mix", path, "--special-tokens", "crystal", "--fim-split", "token"], train_iters=1000)
    tokenizer, vocab = build_vocab(args)
    train, _ = build_datasets(args, args, args, tokenizer, vocab)  # the flags hold all three configs' fields
    specials = tokenizer.special_token_ids
    pre, suf = specials["<|fim_prefix|>"], specials["<|fim_suffix|>"]
    eod = tokenizer.eod
    n = 4000
    seen, fim, spm, spm_p = Counter(), Counter(), Counter(), {}
    for i in range(n):
        s = train[i]
        source = int(s["dataset_id"])
        tokens = s["tokens"].tolist()
        assert {t // 100 for t in tokens if t < VOCAB} <= {source}
        if tokens[0] == eod:  # the window starts at a document boundary: empty first segment, never FIM'd
            continue
        seen[source] += 1
        if tokens[0] != pre:
            continue
        fim[source] += 1
        spm[source] += int(tokens[1] == suf)
        # SPM and PSM with an empty prefix are the same sequence: an SPM shape also shows for PSM when the
        # lower of the two cut points (uniform over the document's n + 1 gaps) is 0. n from the window itself.
        eods = [k for k, t in enumerate(tokens) if t == eod]
        n_doc = (eods[0] - 3) if eods else None
        if n_doc is None:  # the document runs past the window: its length is at least what is left
            window = [int(t) for t in train.dataset[i]["tokens"].tolist()] + [int(train.dataset[i]["labels"][-1])]
            n_doc = next((k for k, t in enumerate(window) if t == eod), len(window))
        q = 1 - (n_doc / (n_doc + 1)) ** 2
        spm_rate = FIM_SOURCES[list(FIM_SOURCES)[source]][1]
        spm_p.setdefault(source, []).append(spm_rate + (1 - spm_rate) * q)
    for source, (name, (fim_rate, spm_rate)) in enumerate(FIM_SOURCES.items()):
        assert seen[source] > 700, (name, seen)
        if fim_rate == 0:
            assert fim[source] == 0, f"{name}: no FIM configured, {fim[source]} windows rearranged"
            continue
        sd = (fim_rate * (1 - fim_rate) * seen[source]) ** 0.5
        expected = fim_rate * seen[source]
        assert abs(fim[source] - expected) <= 4.5 * sd + 1, (
            f"{name}: FIM in {fim[source]} of {seen[source]} first documents, {expected:.0f} expected "
            f"(rate {fim_rate})")
        p = numpy.array(spm_p[source])
        sd = (p * (1 - p)).sum() ** 0.5
        assert abs(spm[source] - p.sum()) <= 4.5 * sd + 1, (
            f"{name}: SPM shape in {spm[source]} of {fim[source]} FIM'd documents, {p.sum():.0f} expected "
            f"(SPM rate {spm_rate})")
