"""data/sft_dataset.py and the fine-tuning flags: epochs, reshuffling, blending, the sidecar's checks."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
from sft_files import random_conversations, write_conversations, write_text

from megatron_ext.arguments import parse_config
from megatron_ext.data.sft_dataset import blend_order, build_sft_datasets, epoch_samples, packed_sources

VOCAB = 128


def _configs(data_path, seq_length=32, seed=5, packing="pack"):
    data = SimpleNamespace(data_path=data_path, split="100,0,0", sft_packing=packing, sft_overlong="truncate")
    return data, SimpleNamespace(seq_length=seq_length, seed=seed)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft_data")
    convs = write_conversations(str(root / "convs"), random_conversations(60, VOCAB - 1, seed=0, max_len=30), VOCAB)
    text = write_text(str(root / "text"), 10, VOCAB - 1, seed=1)
    return convs, text


def _units_of_epoch(packed, epoch):
    return sorted(int(u) for row in packed.epoch_rows(epoch) for u in row)


def test_every_epoch_is_every_conversation_once_in_a_new_order(files):
    convs, _ = files
    packed, _ = packed_sources(*_configs([convs]), part=0)
    source = packed[0]
    assert _units_of_epoch(source, 0) == _units_of_epoch(source, 1) == list(range(60))
    first = [u for row in source.epoch_rows(0) for u in row]
    second = [u for row in source.epoch_rows(1) for u in row]
    assert first != second  # reshuffled
    again, _ = packed_sources(*_configs([convs]), part=0)
    assert [r.tolist() for r in again[0].epoch_rows(1)] == [r.tolist() for r in source.epoch_rows(1)]  # from --seed
    other_seed, _ = packed_sources(*_configs([convs], seed=6), part=0)
    assert [r.tolist() for r in other_seed[0].epoch_rows(0)] != [r.tolist() for r in source.epoch_rows(0)]
    samples = epoch_samples(*_configs([convs]), epochs=3)
    assert samples == sum(len(source.epoch_rows(e)) for e in range(3))


def test_rows_continue_across_epochs_and_blend_by_weight(files):
    convs, text = files
    data, training = _configs(["0.75", convs, "0.25", text])
    train, valid, summary = build_sft_datasets(data, training, 400, 0, pad_id=VOCAB - 1, vocab_size=VOCAB)
    assert valid is None and "conversations" in summary and "text" in summary and "packing efficiency" in summary
    sources = np.asarray([train[i]["dataset_id"] for i in range(400)])
    assert abs((sources == 0).mean() - 0.75) < 0.01
    text_rows = [train[i] for i in range(400) if sources[i] == 1]
    assert all(r["loss_mask"][r["real_tokens"] > 0].all() for r in text_rows)  # plain text: every token trained
    conv_rows = [train[i] for i in range(400) if sources[i] == 0]
    assert all(0 < r["loss_mask"].sum() < r["real_tokens"].sum() for r in conv_rows)  # prompts masked


def test_blend_order_follows_the_weights_exactly():
    sources, rows = blend_order([3.0, 1.0], 8)
    assert sources.tolist() == [0, 0, 1, 0, 0, 0, 1, 0]  # the source furthest behind its share goes next
    assert rows[sources == 0].tolist() == list(range((sources == 0).sum()))


def test_data_tokenised_with_a_larger_vocabulary_is_refused_with_the_flag(files, tmp_path):
    prefix = write_conversations(str(tmp_path / "big"), random_conversations(5, 50, seed=0), 400)
    record = json.loads(open(prefix + ".json").read())
    record["special_tokens"] = ["<|im_start|>", "<|im_end|>"]
    open(prefix + ".json", "w").write(json.dumps(record))
    data, training = _configs([prefix])
    with pytest.raises(ValueError, match="--special-tokens <|im_start|>,<|im_end|>"):
        build_sft_datasets(data, training, 4, 0, pad_id=0, vocab_size=VOCAB)


def _flags(data_path, *extra):
    return ["--model-preset", "tiny", "--device", "cpu", "--tokenizer-type", "NullTokenizer", "--vocab-size",
            str(VOCAB - 1), "--seq-length", "32", "--global-batch-size", "4", "--split", "100,0,0",
            "--data-path", *data_path, *extra]


def test_train_epochs_sets_the_samples_and_the_chat_format_comes_from_the_data(files, tmp_path):
    convs, _ = files
    record = json.loads(open(convs + ".json").read())
    prefix = write_conversations(str(tmp_path / "chat"), random_conversations(60, VOCAB - 1, seed=0, max_len=30), VOCAB)
    open(prefix + ".json", "w").write(json.dumps({**record, "chat_format": "chatml"}))
    config = parse_config(_flags([prefix], "--train-epochs", "2"), world_size=1)
    rows = epoch_samples(*_configs([prefix]), epochs=2)
    assert config.training.train_iters == -(-rows // 4)
    assert config.data.conversation_data and config.data.chat_format == "chatml"
    assert config.training.lr_decay_samples == rows  # the schedule spans the epochs
    with pytest.raises(SystemExit, match="rendered with chatml"):
        parse_config(_flags([prefix], "--train-epochs", "1", "--chat-format", "amberchat"), world_size=1)
    with pytest.raises(SystemExit, match="alternatives"):
        parse_config(_flags([prefix], "--train-epochs", "1", "--train-iters", "3"), world_size=1)
    with pytest.raises(SystemExit, match="conversation data"):
        parse_config(_flags([str(tmp_path / "missing")], "--train-epochs", "1"), world_size=1)
