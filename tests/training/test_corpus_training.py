"""The loss falls on the bundled corpus: tokenizer -> preprocessing -> pretraining, end to end."""

import json

from launch import REPO, read_log, run_pretrain

from megatron_ext.data.preprocess import preprocess_jsonl
from megatron_ext.data.tokenizers import train_sentencepiece


def test_validation_loss_falls_on_bundled_corpus(tmp_path):
    docs = tmp_path / "docs.jsonl"
    lines = (REPO / "data/corpus/english.jsonl").read_text().splitlines()[:150]
    lines += (REPO / "data/corpus/code.jsonl").read_text().splitlines()[:30]
    docs.write_text("\n".join(lines) + "\n")
    model = train_sentencepiece([str(docs)], str(tmp_path / "tok"), vocab_size=1000)
    prefixes, _ = preprocess_jsonl(str(docs), str(tmp_path / "corpus"), tokenizer_type="SentencePieceTokenizer",
                                   tokenizer_model=model, append_eod=True, progress=False)
    log = tmp_path / "log.jsonl"
    run_pretrain(["--model-preset", "tiny-demo", "--seq-length", 64, "--device", "cpu", "--tokenizer-type", "SentencePieceTokenizer",
                  "--tokenizer-model", model, "--data-path", prefixes["text"], "--split", "90,10,0",
                  "--micro-batch-size", 8, "--global-batch-size", 8, "--train-iters", 80, "--lr", 3e-3,
                  "--lr-warmup-iters", 5, "--eval-interval", 80, "--eval-iters", 4, "--log-interval", 10,
                  "--log-json", log, "--tensorboard-dir", tmp_path / "tb"])
    valid = read_log(log, "validation lm loss")
    start, end = valid[0], valid[80]
    assert start > 6.0  # about ln(1000): an untrained model
    assert end < start - 0.5, f"validation loss only went from {start:.3f} to {end:.3f}"
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").iterdir())
    train = read_log(log)
    assert train[80] < train[10]
