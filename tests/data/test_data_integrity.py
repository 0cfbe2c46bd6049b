"""Training data that cannot be right is refused with a message naming the file(s) and the fix.

- a .bin shorter (or longer) than its .idx describes, an .idx of another dataset, a corrupt .idx:
  refused when the datasets are built, before megatron-core's reader touches them;
- token ids outside the vocabulary (data preprocessed with another tokenizer): refused when the
  sample is read, naming the --data-path prefix, the vocabulary size and the id; at TP2 in bf16
  this used to train on with `lm loss: INF` and exit 0.
"""

import json
import shutil

import numpy
import pytest
from launch import run_pretrain

from megatron_ext.data.datasets import build_gpt_datasets
from megatron_ext.data.preprocess import preprocess_jsonl
from megatron_ext.data.tokenizers import build_tokenizer

VOCAB = 1000  # NullTokenizer: ids 0..999, EOD = 1000


def _write(tmp, name, low, high, docs=30, seed=0):
    """A dataset of `docs` documents whose ids lie in [low, high)."""
    rng = numpy.random.default_rng(seed)
    path = tmp / f"{name}.jsonl"
    with open(path, "w") as f:
        for _ in range(docs):
            ids = rng.integers(low, high, int(rng.integers(30, 90)))
            f.write(json.dumps({"text": " ".join(map(str, ids))}) + "\n")
    prefixes, _ = preprocess_jsonl(str(path), str(tmp / name), tokenizer_type="NullTokenizer",
                                   vocab_size=VOCAB, append_eod=True, progress=False)
    return prefixes["text"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("integrity")
    return {"low": _write(tmp, "low", 0, 400), "high": _write(tmp, "high", 600, 1000, docs=20, seed=1),
            "tok": build_tokenizer("NullTokenizer", None, vocab_size=VOCAB)}


def _copy(prefix, tmp, name, bin_from=None):
    """A copy of prefix's pair under tmp/name (its .bin taken from bin_from if given)."""
    out = str(tmp / name)
    shutil.copyfile(prefix + ".idx", out + ".idx")
    shutil.copyfile((bin_from or prefix) + ".bin", out + ".bin")
    return out


def _build(prefix, tok, split="100,0,0"):
    return build_gpt_datasets([prefix], split, 32, 1, tok, (20, 0, 0))


# --- .bin/.idx integrity -----------------------------------------------------------

def test_intact_pair_is_accepted(data):
    train, _, _ = _build(data["low"], data["tok"])
    assert len(train) >= 20


def test_truncated_bin_is_refused_at_build_naming_both_files(data, tmp_path):
    prefix = _copy(data["low"], tmp_path, "cut")
    size = (tmp_path / "cut.bin").stat().st_size
    with open(prefix + ".bin", "r+b") as f:
        f.truncate(size - 10)  # an interrupted copy: the tail of the last document is missing
    with pytest.raises(ValueError) as err:
        _build(prefix, data["tok"])
    message = str(err.value)
    assert f"{prefix}.bin holds {size - 10} bytes" in message and f"{prefix}.idx describes {size}" in message
    assert "truncated" in message and "tools/preprocess_data.py" in message


@pytest.mark.parametrize("bin_of", ["high", "low_longer"])
def test_idx_of_another_dataset_is_refused_naming_both_files(data, tmp_path, bin_of):
    # "high" has fewer tokens than "low" (megatron-core: a bare numpy offset error, or worse, no
    # error until a sample past the end is read); a .bin with more tokens than the .idx describes
    # would be read without any error at all.
    idx_of, bin_from = ("low", data["high"]) if bin_of == "high" else ("high", data["low"])
    prefix = _copy(data[idx_of], tmp_path, "mixed", bin_from=bin_from)
    with pytest.raises(ValueError) as err:
        _build(prefix, data["tok"])
    message = str(err.value)
    assert f"{prefix}.bin holds" in message and f"{prefix}.idx describes" in message
    assert "another dataset" in message and "tools/preprocess_data.py" in message


def test_corrupt_idx_is_refused_naming_it(data, tmp_path):
    prefix = _copy(data["low"], tmp_path, "bad_header")
    with open(prefix + ".idx", "r+b") as f:
        f.write(b"NOTANIDX!")
    with pytest.raises(ValueError, match=rf"{prefix}\.idx is not a Megatron index file.*preprocess_data\.py"):
        _build(prefix, data["tok"])
    prefix = _copy(data["low"], tmp_path, "short_idx")
    with open(prefix + ".idx", "r+b") as f:
        f.truncate((tmp_path / "short_idx.idx").stat().st_size - 8)
    with pytest.raises(ValueError, match=rf"{prefix}\.idx is truncated or corrupt.*preprocess_data\.py"):
        _build(prefix, data["tok"])


# --- token ids against the vocabulary ------------------------------------------------

def _token_checked(data, data_path, vocab, split="100,0,0"):
    """The datasets as pretrain builds them (data/build.py), for a NullTokenizer of `vocab` ids."""
    from types import SimpleNamespace

    from megatron_ext.data.build import build_datasets

    tok = build_tokenizer("NullTokenizer", None, vocab_size=vocab - 1)  # + EOD = vocab ids
    args = SimpleNamespace(train_iters=10, global_batch_size=4, eval_interval=None, eval_iters=0,
                           mock_data=False, data_path=data_path, split=split, seq_length=32, seed=1,
                           data_cache_path=None, data_mix=None)
    return build_datasets(args, args, args, tok, tok.vocab_size)  # data, training and logging fields in one


def test_ids_within_the_vocabulary_pass_unchanged(data):
    train, _ = _token_checked(data, [data["low"]], VOCAB + 1)
    plain, _, _ = _build(data["low"], data["tok"])
    for i in range(len(train)):
        assert train[i]["tokens"].tolist() == plain[i]["tokens"].tolist()


def test_id_beyond_the_vocabulary_names_dataset_vocabulary_and_id(data):
    train, _ = _token_checked(data, [data["low"]], 300)
    with pytest.raises(ValueError) as err:
        for i in range(len(train)):
            train[i]
    message = str(err.value)
    assert message.startswith(f"--data-path {data['low']}: token id ")
    bad = int(message.split("token id ")[1].split()[0])
    assert bad >= 300
    assert "vocabulary of 300 ids" in message and "--tokenizer-model" in message
    assert "tools/preprocess_data.py" in message


def test_blend_names_the_source_that_holds_the_bad_id(data):
    # Vocabulary 601: every id of "low" fits, "high" holds ids 600..999.
    train, _ = _token_checked(data, ["0.5", data["low"], "0.5", data["high"]], 601)
    with pytest.raises(ValueError, match=rf"^--data-path {data['high']}: token id"):
        for i in range(len(train)):
            train[i]


def test_pretrain_tp2_bf16_stops_naming_the_dataset(data):
    """The launch that used to log `lm loss: INF` and exit 0: ids up to 1000, --vocab-size 300."""
    proc = run_pretrain(["--model-preset", "tiny", "--device", "cpu", "--bf16", "--train-iters", 3,
                         "--micro-batch-size", 1, "--global-batch-size", 2, "--log-interval", 1,
                         "--tensor-model-parallel-size", 2, "--tokenizer-type", "NullTokenizer",
                         "--vocab-size", 300, "--data-path", data["low"], "--split", "100,0,0"],
                        nproc=2, check=False)
    assert proc.returncode != 0, proc.stdout[-3000:]
    assert f"TokenIdError: --data-path {data['low']}: token id " in proc.stdout, proc.stdout[-3000:]
    assert "vocabulary of 301 ids" in proc.stdout  # NullTokenizer: --vocab-size + its EOD
    assert "lm loss:" not in proc.stdout


def test_pretrain_refuses_truncated_bin_at_start_up(data, tmp_path):
    prefix = _copy(data["low"], tmp_path, "cut")
    with open(prefix + ".bin", "r+b") as f:
        f.truncate((tmp_path / "cut.bin").stat().st_size // 2)
    proc = run_pretrain(["--model-preset", "tiny", "--device", "cpu", "--train-iters", 2,
                         "--micro-batch-size", 1, "--global-batch-size", 2,
                         "--tokenizer-type", "NullTokenizer", "--vocab-size", VOCAB,
                         "--data-path", prefix, "--split", "100,0,0"], check=False)
    assert proc.returncode != 0
    assert f"{prefix}.bin holds" in proc.stdout and "tools/preprocess_data.py" in proc.stdout
    assert "lm loss:" not in proc.stdout
