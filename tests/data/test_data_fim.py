"""Fill-in-the-middle transform: permutation, sentinel counts, orders, rates, determinism."""

from collections import Counter

import numpy as np
import pytest
import torch

from megatron_ext.data.fim import (FIMDataset, FIMRates, FIMSentinels, fim_window,
                                   permute_document)

S = FIMSentinels(prefix=1001, middle=1002, suffix=1003)
EOD, PAD = 1000, 1004


def _split_psm(out):
    assert out[0] == S.prefix
    i_suf, i_mid = list(out).index(S.suffix), list(out).index(S.middle)
    return out[1:i_suf], out[i_mid + 1:], out[i_suf + 1:i_mid]  # prefix, middle, suffix


def _split_spm(out):
    assert list(out[:2]) == [S.prefix, S.suffix]
    i_mid = list(out).index(S.middle)
    return out[i_mid + 1:], out[2:i_mid]  # prefix+middle, suffix


@pytest.mark.parametrize("seed", range(20))
def test_token_level_output_is_a_permutation_plus_three_sentinels(seed):
    rng = np.random.default_rng(seed)
    doc = rng.integers(0, 1000, int(rng.integers(0, 60)))
    out = permute_document(doc, rng, FIMRates(1.0, 0.5), S)
    if len(doc) == 0:
        assert len(out) == 0  # nothing to fill in
        return
    counts = Counter(out.tolist())
    assert counts[S.prefix] == counts[S.middle] == counts[S.suffix] == 1
    assert sorted(t for t in out.tolist() if t < 1000) == sorted(doc.tolist())
    assert len(out) == len(doc) + 3


@pytest.mark.parametrize("seed", range(10))
def test_psm_order(seed):
    doc = np.arange(100, 140)
    out = permute_document(doc, np.random.default_rng(seed), FIMRates(1.0, 0.0), S)
    prefix, middle, suffix = _split_psm(out)
    # prefix, middle, suffix are consecutive slices of the document
    assert np.concatenate([prefix, middle, suffix]).tolist() == doc.tolist()


@pytest.mark.parametrize("seed", range(10))
def test_spm_order(seed):
    doc = np.arange(100, 140)
    out = permute_document(doc, np.random.default_rng(seed), FIMRates(1.0, 1.0), S)
    prefix_middle, suffix = _split_spm(out)
    assert np.concatenate([prefix_middle, suffix]).tolist() == doc.tolist()


def test_rates_are_realised():
    rng = np.random.default_rng(0)
    doc = np.arange(10, 50)
    n, fim, spm = 6000, 0, 0
    for _ in range(n):
        out = permute_document(doc, rng, FIMRates(0.9, 0.5), S)
        if len(out) != len(doc):
            fim += 1
            spm += int(out[1] == S.suffix)
    # Binomial standard deviations: 0.004 for the FIM rate, 0.007 for SPM; 4-5 sigma bounds.
    assert abs(fim / n - 0.9) < 0.02
    assert abs(spm / fim - 0.5) < 0.03


class _Samples:
    """Windows of seq_length + 1 tokens cut from a stream of documents, as GPTDataset gives."""

    def __init__(self, n=200, seq=64, source_of=lambda i: 0):
        self.seq, self.n, self.source_of = seq, n, source_of

    def __len__(self):
        return self.n

    def window(self, i):
        rng = np.random.default_rng(i)
        out = []
        while len(out) < self.seq + 1:
            out += rng.integers(0, 1000, int(rng.integers(1, 30))).tolist() + [EOD]
        return np.array(out[:self.seq + 1])

    def __getitem__(self, i):
        w = torch.from_numpy(self.window(i))
        return {"tokens": w[:-1], "labels": w[1:], "loss_mask": torch.ones(self.seq),
                "position_ids": torch.arange(self.seq), "dataset_id": self.source_of(i)}


def _docs(window):
    """Documents of a window, split at EOD."""
    docs, cur = [], []
    for t in window:
        if t == EOD:
            docs.append(cur)
            cur = []
        else:
            cur.append(t)
    return docs + [cur]


def test_window_keeps_length_and_transforms_each_document_separately():
    base = _Samples()
    for i in range(50):
        window = base.window(i)
        rng = np.random.default_rng([7, i])
        out, n_pad = fim_window(window, rng, FIMRates(1.0, 0.5), S, EOD, PAD)
        assert len(out) == len(window) and n_pad == 0
        # Untruncated, document k of the output is document k of the input,
        # rearranged: check every document that ends before the window does.
        for d_in, d_out in list(zip(_docs(window), _docs(out)))[:-1]:
            if d_in:
                assert Counter(d_out) == Counter(d_in + [S.prefix, S.middle, S.suffix])
            else:
                assert d_out == []


def test_dataset_wrapper_shifts_labels_and_is_deterministic():
    base = _Samples(source_of=lambda i: i % 2)
    rates = {0: FIMRates(1.0, 0.5)}  # source 1 has no FIM
    a = FIMDataset(base, rates, S, eod=EOD, pad=PAD, seed=3)
    b = FIMDataset(base, rates, S, eod=EOD, pad=PAD, seed=3)
    c = FIMDataset(base, rates, S, eod=EOD, pad=PAD, seed=4)
    assert len(a) == len(base)
    differs = 0
    for i in range(40):
        x, y, z = a[i], b[i], c[i]
        assert torch.equal(x["tokens"], y["tokens"])
        assert x["tokens"].shape == (base.seq,) and isinstance(x["tokens"], torch.Tensor)
        assert torch.equal(x["tokens"][1:], x["labels"][:-1])  # still shifted by one
        assert float(x["loss_mask"].sum()) == base.seq  # loss on every token, sentinels too
        if i % 2:
            assert torch.equal(x["tokens"], base[i]["tokens"])  # untouched source
        else:
            assert (x["tokens"] == S.prefix).any()
            differs += int(not torch.equal(x["tokens"], z["tokens"]))
    assert differs > 10  # another seed gives other split points


def _within_binomial_bound(hits: int, probabilities, what: str, sigmas: float = 4.5) -> None:
    """hits ~ a sum of independent Bernoulli(p_i): within `sigmas` standard deviations of its mean
    (plus one count, for the discreteness of small samples)."""
    p = np.asarray(probabilities, dtype=np.float64)
    assert len(p) > 50, f"{what}: only {len(p)} observations"
    mean, sd = p.sum(), np.sqrt((p * (1 - p)).sum())
    assert abs(hits - mean) <= sigmas * sd + 1, (
        f"{what}: {hits} of {len(p)} observed, {mean:.1f} expected (rate {hits / len(p):.3f} vs "
        f"{mean / len(p):.3f}, bound {sigmas} sd = {sigmas * sd:.1f})")


def _empty_prefix_probability(n: int) -> float:
    """Two cut points uniform over the n + 1 gaps of an n-token document: the prefix is empty when the lower
    one is 0. SPM and PSM with an empty prefix are the same token sequence, so an observed SPM shape has
    probability spm_rate + (1 - spm_rate) * this."""
    return 1.0 - (n / (n + 1)) ** 2


# Per source: (FIM rate, SPM rate). Source 3 has no FIM.
RATES_BY_SOURCE = {0: FIMRates(0.1, 0.0), 1: FIMRates(0.5, 1.0), 2: FIMRates(0.9, 0.5)}


def test_configured_rates_are_realised_per_source_through_the_dataset():
    """The FIM and SPM rates each source is configured with are the rates its documents get, measured
    on the samples the training loop reads (FIMDataset over a 4-source blend): every document that
    cannot be truncated away by FIM growth is counted, whether or not it was rearranged."""
    n_sources = 4
    base = _Samples(n=4000, source_of=lambda i: i % n_sources)
    dataset = FIMDataset(base, RATES_BY_SOURCE, S, eod=EOD, pad=PAD, seed=11)
    docs_seen = {s: 0 for s in range(n_sources)}
    fim_hits = {s: 0 for s in range(n_sources)}
    spm_hits, spm_p = {s: 0 for s in range(n_sources)}, {s: [] for s in range(n_sources)}
    for i in range(len(base)):
        source = i % n_sources
        window = base.window(i)
        sample = dataset[i]
        out = np.concatenate([sample["tokens"].numpy(), sample["labels"].numpy()[-1:]])
        assert int(sample["dataset_id"]) == source
        start = 0
        for k, (d_in, d_out) in enumerate(zip(_docs(window), _docs(out))):
            end = start + len(d_in)  # the document's last token + 1 in the original window
            # Complete in the output even if it and every document before it grew by 3 sentinels:
            # a choice that does not depend on the FIM decisions, so the count is unbiased.
            if end + 3 * (k + 1) >= len(window):
                break
            start = end + 1
            if not d_in:
                continue
            docs_seen[source] += 1
            if d_out == d_in:
                continue
            assert d_out[0] == S.prefix and len(d_out) == len(d_in) + 3, (i, k)
            fim_hits[source] += 1
            spm_hits[source] += int(d_out[1] == S.suffix)
            rates = RATES_BY_SOURCE[source]
            spm_p[source].append(rates.spm_rate + (1 - rates.spm_rate) * _empty_prefix_probability(len(d_in)))
    for source in range(n_sources):
        rates = RATES_BY_SOURCE.get(source)
        if rates is None:
            assert fim_hits[source] == 0, f"source {source} has no FIM but {fim_hits[source]} documents got it"
            continue
        _within_binomial_bound(fim_hits[source], [rates.fim_rate] * docs_seen[source],
                               f"source {source} FIM rate {rates.fim_rate}")
        _within_binomial_bound(spm_hits[source], spm_p[source], f"source {source} SPM rate {rates.spm_rate}")


class _CharTokenizer:
    """One token per character (ids = code points < 1000)."""

    def tokenize(self, text):
        return [ord(c) for c in text]

    def detokenize(self, ids):
        return "".join(chr(i) for i in ids)


def test_character_level_split_re_encodes_pieces():
    tok = _CharTokenizer()
    text = "def add(a, b):\n    return a + b\n"
    doc = np.array(tok.tokenize(text))
    for seed in range(10):
        out = permute_document(doc, np.random.default_rng(seed), FIMRates(1.0, 0.0), S,
                               tokenizer=tok, mode="char")
        prefix, middle, suffix = _split_psm(out)
        assert tok.detokenize(np.concatenate([prefix, middle, suffix]).tolist()) == text
    with pytest.raises(ValueError, match="tokenizer"):
        FIMDataset(_Samples(), {0: FIMRates(1.0, 0.0)}, S, eod=EOD, mode="char")


def test_shorter_re_encoding_is_padded_and_masked():
    class Dropping(_CharTokenizer):  # re-encoding loses two characters per piece
        def tokenize(self, text):
            return super().tokenize(text)[2:]

    window = np.array([ord(c) for c in "abcdefghij"] + [EOD] + [ord(c) for c in "klmnopqrs"])
    out, n_pad = fim_window(window, np.random.default_rng(0), FIMRates(1.0, 0.0), S, EOD, PAD,
                            tokenizer=Dropping(), mode="char")
    assert len(out) == len(window) and n_pad > 0 and (out[-n_pad:] == PAD).all()


@pytest.fixture(scope="module")
def crystal_sp_tokenizer(tmp_path_factory):
    """A real SentencePiece BPE model (with the dummy-prefix space, as LLaMA's has) trained on a
    slice of the bundled code, plus Crystal's special tokens: what crystal_phase2.sh uses."""
    import json
    from pathlib import Path

    from megatron_ext.data.tokenizers import build_tokenizer, train_sentencepiece

    corpus = Path(__file__).resolve().parents[2] / "data" / "corpus" / "code.jsonl"
    d = tmp_path_factory.mktemp("fim_sp")
    docs = [json.loads(line)["text"] for line in corpus.read_text(encoding="utf-8").splitlines()[:20]]
    (d / "code.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs), encoding="utf-8")
    model = train_sentencepiece([str(d / "code.jsonl")], str(d / "tok"), vocab_size=600)
    return build_tokenizer("SentencePieceTokenizer", model, special_tokens="crystal"), docs


@pytest.fixture(scope="module")
def crystal_hf_tokenizer(crystal_sp_tokenizer, tmp_path_factory):
    """The same SentencePiece model as a Hugging Face LLaMA tokenizer (as tools/convert_to_hf.py exports
    it), which also puts a "▁" space before the start of every text it encodes."""
    import shutil

    from transformers import LlamaTokenizer

    from megatron_ext.data.tokenizers import build_tokenizer

    sp, docs = crystal_sp_tokenizer
    d = tmp_path_factory.mktemp("fim_hf")
    shutil.copy2(sp.base.path, d / "tokenizer.model")
    LlamaTokenizer.from_pretrained(str(d)).save_pretrained(str(d))
    tok = build_tokenizer("HuggingFaceTokenizer", str(d), special_tokens="crystal")
    plain = tok.detokenize(tok.tokenize("def ad") + tok.tokenize("d(x)"))
    assert plain != "def add(x)", "this tokenizer no longer shows the problem the fragment encoding solves"
    return tok, docs


@pytest.mark.parametrize("which", ["sentencepiece", "huggingface-llama"])
def test_character_level_split_is_a_permutation(which, crystal_sp_tokenizer, crystal_hf_tokenizer):
    """Cut points fall inside words and runs of spaces; decoding the three re-encoded pieces and
    joining them gives the document's text exactly: no space added at a cut, none lost."""
    tok, docs = crystal_sp_tokenizer if which == "sentencepiece" else crystal_hf_tokenizer
    sentinels = FIMSentinels.from_tokenizer(tok)
    assert tok.tokenize("<|fim_prefix|>")[0] == sentinels.prefix == tok.base.vocab_size  # id 600: first special
    checked = 0
    for i, text in enumerate(docs[:8]):
        doc = np.array(tok.tokenize(text[:400]))
        expected = tok.detokenize_fragment(doc.tolist())
        assert expected.lstrip(" ") == text[:400].lstrip(" ")  # only the dummy-prefix space differs
        for seed in range(5):
            out = permute_document(doc, np.random.default_rng(100 * i + seed), FIMRates(1.0, 0.0), sentinels,
                                   tokenizer=tok, mode="char")
            counts = Counter(out.tolist())
            assert counts[sentinels.prefix] == counts[sentinels.middle] == counts[sentinels.suffix] == 1
            i_suf, i_mid = list(out).index(sentinels.suffix), list(out).index(sentinels.middle)
            prefix, suffix, middle = out[1:i_suf], out[i_suf + 1:i_mid], out[i_mid + 1:]
            pieces = [tok.detokenize_fragment(p.tolist()) for p in (prefix, middle, suffix)]
            assert "".join(pieces) == expected, f"doc {i} seed {seed}: {pieces!r}"
            checked += 1
    assert checked == 40
