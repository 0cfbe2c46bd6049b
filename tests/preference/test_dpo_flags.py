"""DPO's flags at start-up (in-process): --train-epochs counts rows of whole pairs as the trainer packs them,
and bad --dpo-* values stop the run before any process group, naming the flag."""

import pytest

from megatron_ext.arguments import parse_config
from megatron_ext.preference.dataset import preference_sources
from prefdata import copy_task, write_pairs


def flags(prefix, *extra):
    return ["--model-preset", "tiny", "--device", "cpu", "--tokenizer-type", "NullTokenizer", "--vocab-size", "32",
            "--data-path", prefix, "--split", "100,0,0", "--seq-length", "64", "--micro-batch-size", "2",
            "--global-batch-size", "4", *extra]


@pytest.fixture(scope="module")
def prefix(tmp_path_factory):
    return write_pairs(str(tmp_path_factory.mktemp("flags") / "toy"), copy_task(50, seed=3), vocab_size=33)


@pytest.mark.parametrize("packing", ["pad", "pack"])
def test_train_epochs_count_rows_of_whole_pairs(prefix, packing):
    """pad: one pair (two sequences) a row, so 3 epochs of 50 pairs are 150 rows (counting sequences as
    conversations would give 300); pack: as the trainer packs the pairs."""
    config = parse_config(flags(prefix, "--train-epochs", "3", "--sft-packing", packing))
    (packed,), _ = preference_sources(config.data, config.training, 0)
    rows = packed.rows_in_epochs(3)
    assert rows == 150 if packing == "pad" else rows < 150
    assert config.flags.train_samples == rows
    assert config.training.train_iters == -(-rows // 4)


@pytest.mark.parametrize("extra,message", [
    (["--dpo-beta", "0"], "--dpo-beta 0.0: must be > 0"),
    (["--dpo-label-smoothing", "0.5"], "--dpo-label-smoothing 0.5: must lie in"),
    (["--dpo-loss", "ipo", "--dpo-label-smoothing", "0.1"], "sigmoid only"),
])
def test_bad_dpo_flags_are_refused_at_start_up(prefix, extra, message):
    with pytest.raises(SystemExit, match=message):
        parse_config(flags(prefix, "--train-iters", "2", *extra))
