"""build_gpt_datasets on megatron-core: sample layout, blends, caches, gloo ranks.

The data uses NullTokenizer ids chosen so every sample can be checked against
its source: document d of the fixture holds ids in its own band
[20*d, 20*d + 20), counting up and wrapping inside the band, and each
document ends with EOD.  So a token tells which document (and dataset) it
came from, and consecutive tokens must count up by one inside a document.
"""

import json
import multiprocessing
import os

import numpy
import pytest
import torch
from megatron.core.datasets.indexed_dataset import IndexedDataset

from megatron_ext.data.datasets import build_gpt_datasets
from megatron_ext.data.preprocess import preprocess_jsonl
from megatron_ext.data.tokenizers import build_tokenizer

BAND = 20
VOCAB = 1000  # ids 0..999, EOD = 1000
A_DOCS = range(0, 30)  # dataset A: documents with bands 0..29
B_DOCS = range(30, 50)  # dataset B: bands 30..49


def _write_dataset(tmp, name, doc_ids, rng):
    path = tmp / f"{name}.jsonl"
    with open(path, "w") as f:
        for d in doc_ids:
            n = int(rng.integers(30, 90))
            ids = [BAND * d + j % BAND for j in range(n)]
            f.write(json.dumps({"text": " ".join(map(str, ids))}) + "\n")
    prefixes, _ = preprocess_jsonl(str(path), str(tmp / name), tokenizer_type="NullTokenizer",
                                   vocab_size=VOCAB, append_eod=True, progress=False)
    return prefixes["text"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpt")
    rng = numpy.random.default_rng(0)
    return {"a": _write_dataset(tmp, "a", A_DOCS, rng), "b": _write_dataset(tmp, "b", B_DOCS, rng),
            "tok": build_tokenizer("NullTokenizer", None, vocab_size=VOCAB)}


def _window(sample):
    """The seq_length + 1 consecutive tokens the sample was cut from."""
    return sample["tokens"].tolist() + [int(sample["labels"][-1])]


def _docs_in(sample):
    return {t // BAND for t in _window(sample) if t != VOCAB}


def _assert_contiguous(window):
    for x, y in zip(window, window[1:]):
        if x != VOCAB and y != VOCAB:
            assert y == BAND * (x // BAND) + (x % BAND + 1) % BAND, (x, y)


def test_samples_are_shifted_contiguous_windows(data):
    train, valid, test = build_gpt_datasets(
        [data["a"]], "90,10,0", 32, 1234, data["tok"], (50, 5, 0))
    assert test is None  # zero share
    assert len(train) >= 50 and len(valid) >= 5  # megatron builds whole epochs
    for i in range(len(train)):
        s = train[i]
        assert set(s) == {"tokens", "labels", "loss_mask", "position_ids"}  # no attention mask
        assert s["tokens"].shape == s["labels"].shape == (32,)
        assert s["tokens"].dtype == torch.int64
        assert torch.equal(s["tokens"][1:], s["labels"][:-1])  # labels = next token
        assert torch.equal(s["position_ids"], torch.arange(32))
        assert torch.equal(s["loss_mask"], torch.ones(32))
        _assert_contiguous(_window(s))
        assert _docs_in(s) <= set(range(27))  # train = first 90% of the 30 documents
    for i in range(len(valid)):
        assert _docs_in(valid[i]) <= {27, 28, 29}


def test_weighted_blend_realises_the_weights(data):
    train, valid, _ = build_gpt_datasets(
        ["0.3", data["a"], "0.7", data["b"]], "100,0,0", 16, 1234, data["tok"], (1000, 0, 0))
    assert valid is None and len(train) == 1000
    from_a = 0
    for i in range(len(train)):
        s = train[i]
        docs = _docs_in(s)
        in_a = docs <= set(A_DOCS)
        assert in_a or docs <= set(B_DOCS)  # never mixes datasets within a sample
        assert int(s["dataset_id"]) == (0 if in_a else 1)
        from_a += in_a
    assert abs(from_a / len(train) - 0.3) < 0.02


def test_unweighted_prefixes_blend_by_size(data):
    # 400 samples is more than one epoch of the two datasets together (~180).
    train, _, _ = build_gpt_datasets([data["a"], data["b"]], "100,0,0", 16, 7, data["tok"],
                                     (400, 0, 0))
    assert len(train) >= 400  # megatron rounds each share up
    indexed = [IndexedDataset(data[k]) for k in ("a", "b")]  # kept alive: mmap'd lengths
    tokens = [float(ds.sequence_lengths.sum()) for ds in indexed]
    from_a = sum(int(train[i]["dataset_id"]) == 0 for i in range(len(train)))
    assert abs(from_a / len(train) - tokens[0] / sum(tokens)) < 0.02


def test_missing_data_path_names_path_and_fix(data, tmp_path):
    missing = str(tmp_path / "nothing_text_document")
    with pytest.raises(FileNotFoundError, match=r"nothing_text_document.*preprocess_data\.py"):
        build_gpt_datasets(["0.5", data["a"], "0.5", missing], "1,0,0", 16, 1, data["tok"],
                           (10, 0, 0))
    with pytest.raises(FileNotFoundError, match="without the .bin"):
        build_gpt_datasets([data["a"] + ".bin"], "1,0,0", 16, 1, data["tok"], (10, 0, 0))


def test_split_with_no_documents_fails_instead_of_hanging(data):
    # 30 documents with "969,30,1": the test share rounds to zero documents.
    with pytest.raises(ValueError, match="test split no documents"):
        build_gpt_datasets([data["a"]], "969,30,1", 16, 1, data["tok"], (10, 2, 2))
    train, valid, test = build_gpt_datasets([data["a"]], "969,30,1", 16, 1, data["tok"],
                                            (10, 2, 0))
    assert test is None and len(valid) >= 2


def _first_tokens(ds, n=20):
    return [ds[i]["tokens"].tolist() for i in range(n)]


def test_blend_with_cache_in_single_process(data, tmp_path):
    args = (["0.3", data["a"], "0.7", data["b"]], "90,10,0", 16, 3, data["tok"], (300, 30, 0))
    train, _, _ = build_gpt_datasets(*args, data_cache_path=str(tmp_path / "cache"))
    names = os.listdir(tmp_path / "cache")
    assert any("BlendedDataset" in n for n in names) and any("GPTDataset" in n for n in names)
    assert not torch.distributed.is_initialized()  # our temporary group is gone
    again, _, _ = build_gpt_datasets(*args, data_cache_path=str(tmp_path / "cache"))  # cache hit
    assert _first_tokens(train) == _first_tokens(again)


def _rank_main(rank, store, cache, data, out):
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank,
                                         world_size=2)
    try:
        train, valid, _ = build_gpt_datasets(
            ["0.3", data["a"], "0.7", data["b"]], "90,10,0", 16, 3, data["tok"], (300, 30, 0),
            data_cache_path=cache)
        with open(f"{out}.{rank}", "w") as f:
            json.dump([_first_tokens(train), _first_tokens(valid, 5)], f)
    finally:
        torch.distributed.destroy_process_group()


def test_two_gloo_ranks_build_the_same_datasets(data, tmp_path):
    ctx = multiprocessing.get_context("fork")  # children reuse the parent's imports
    out = str(tmp_path / "samples")
    procs = [ctx.Process(target=_rank_main, args=(r, str(tmp_path / "store"),
                                                  str(tmp_path / "cache"), data, out))
             for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        if p.is_alive():
            p.kill()
        assert p.exitcode == 0
    results = [json.load(open(f"{out}.{r}")) for r in range(2)]
    assert results[0] == results[1]
    # Same seed and data without torch.distributed: the same samples.
    train, valid, _ = build_gpt_datasets(
        ["0.3", data["a"], "0.7", data["b"]], "90,10,0", 16, 3, data["tok"], (300, 30, 0))
    assert results[0] == [_first_tokens(train), _first_tokens(valid, 5)]


def test_start_up_data_summary_names_each_source_and_its_weight():
    from types import SimpleNamespace

    from megatron_ext.data.build import describe_data

    def summary(data_path, data_mix=None):
        data = SimpleNamespace(mock_data=False, data_mix=data_mix, data_path=data_path, split="99,1,0",
                               fim_split="char")
        return describe_data(data, SimpleNamespace(eval_interval=None))

    assert summary(["1", "a", "3", "b"]).splitlines()[1:] == ["     a: weight 0.2500", "     b: weight 0.7500"]
    assert summary(["a"]).splitlines()[1:] == ["     a: weight 1.0000"]
    # Unweighted prefixes are blended by token count (build_gpt_datasets), not equally.
    assert "weighted by their token counts" in summary(["a", "b"]).splitlines()[0]
    mix = os.path.join(os.path.dirname(__file__), "..", "..", "data", "mixes", "crystal_phase2.json")
    crystal = summary([], data_mix=mix)
    assert "starcoder: weight 0.6281, FIM rate 0.9 (SPM 0.5, char split)" in crystal
    assert "slimpajama_c4: weight 0.0991\n" in crystal
