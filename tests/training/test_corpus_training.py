"""The loss falls on the bundled corpus: tokenizer -> preprocessing -> pretraining, end to end; the
iteration lines have Megatron-LM's fields, and TensorBoard holds the same scalars as the JSON log."""

import re

import pytest
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
    proc = run_pretrain(["--model-preset", "tiny-demo", "--seq-length", 64, "--device", "cpu", "--tokenizer-type", "SentencePieceTokenizer",
                  "--tokenizer-model", model, "--data-path", prefixes["text"], "--split", "90,10,0",
                  "--micro-batch-size", 8, "--global-batch-size", 8, "--train-iters", 80, "--lr", 3e-3,
                  "--lr-warmup-iters", 5, "--eval-interval", 80, "--eval-iters", 4, "--log-interval", 10,
                  "--log-json", log, "--tensorboard-dir", tmp_path / "tb", "--peak-tflops", 0.5])
    valid = read_log(log, "validation lm loss")
    start, end = valid[0], valid[80]
    assert start > 6.0  # about ln(1000): an untrained model
    assert end < start - 0.5, f"validation loss only went from {start:.3f} to {end:.3f}"
    train = read_log(log)
    assert train[80] < train[10]
    check_iteration_lines(proc.stdout, train, total=80, interval=10)
    check_tensorboard(tmp_path / "tb", train, valid)


NUMBER = r"([-+0-9.eE]+)"
LINE = re.compile(r" iteration +(\d+)/ +(\d+) \| consumed samples: +(\d+) \|.* learning rate: ([0-9.]+E[-+]\d+) \|"
                  r".* lm loss: (\d\.\d{6}E[-+]\d\d) \| grad norm: " + NUMBER + r" \| tokens per second: " + NUMBER +
                  r" \| TFLOP/s per device: " + NUMBER + r" \| MFU: " + NUMBER + r"% \|")


def check_iteration_lines(stdout: str, train: dict, total: int, interval: int) -> None:
    """One line per --log-interval in Megatron-LM's format; the printed loss is the logged one."""
    lines = [m for m in map(LINE.search, stdout.splitlines()) if m]
    assert [int(m[1]) for m in lines] == list(range(interval, total + 1, interval)), stdout[-3000:]
    for m in lines:
        iteration, samples = int(m[1]), int(m[3])
        assert int(m[2]) == total and samples == iteration * 8  # global batch 8
        assert float(m[5]) == pytest.approx(train[iteration], rel=1e-6)
        tokens_per_s, tflops, mfu = float(m[7]), float(m[8]), float(m[9])
        assert float(m[4]) > 0 or iteration == total  # cosine decay reaches --min-lr 0 at the end
        assert float(m[6]) > 0 and tokens_per_s > 0
        # MFU against --peak-tflops 0.5, up to the printed TFLOP/s' rounding to 2 decimals
        assert abs(mfu - 100 * tflops / 0.5) <= 100 * 0.005 / 0.5 + 0.005


def check_tensorboard(tb_dir, train: dict, valid: dict) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tb_dir))
    events.Reload()
    scalars = events.Tags()["scalars"]
    for tag in ("lm loss", "validation lm loss", "learning-rate", "grad-norm", "tokens-per-second",
                "tflops-per-device", "mfu-percent"):
        assert tag in scalars, f"TensorBoard has no {tag!r}: {scalars}"
    tflops = {e.step: e.value for e in events.Scalars("tflops-per-device")}
    mfu = {e.step: e.value for e in events.Scalars("mfu-percent")}
    assert mfu == pytest.approx({step: 100 * value / 0.5 for step, value in tflops.items()}, rel=1e-5)
    by_step = {e.step: e.value for e in events.Scalars("lm loss")}
    assert by_step == pytest.approx(train, rel=1e-6)
    validation = {e.step: e.value for e in events.Scalars("validation lm loss")}
    assert validation == pytest.approx(valid, rel=1e-6)
