"""From flags to a tokenizer and the train/validation datasets the loop reads."""

from __future__ import annotations

from megatron_ext.data.loader import MockGPTDataset


def build_vocab(data):
    """(tokenizer or None, vocabulary size) for a DataConfig. The model's vocabulary follows the tokenizer."""
    if data.mock_data and not data.tokenizer_model:
        if not data.vocab_size:
            raise SystemExit("error: --mock-data without a tokenizer needs --vocab-size (or a --model-preset)")
        return None, data.vocab_size
    from megatron_ext.data.tokenizers import build_tokenizer

    tokenizer = build_tokenizer(data.tokenizer_type, data.tokenizer_model, data.vocab_size,
                                special_tokens=getattr(data, "special_tokens", None),
                                vocab_pad_to=getattr(data, "vocab_pad_to", None))
    return tokenizer, tokenizer.vocab_size


def sample_counts(training, logging) -> tuple[int, int]:
    """(train, validation) samples: --train-iters and --eval-iters global batches (none without --eval-interval)."""
    train = training.train_iters * training.global_batch_size
    valid = logging.eval_iters * training.global_batch_size if logging.eval_interval else 0
    return train, valid


def build_datasets(data, training, logging, tokenizer, vocab_size: int):
    """(train, validation or None) datasets: DataConfig's sources, TrainingConfig's length, seed and sample
    count, LoggingConfig's evaluation count."""
    train_samples, valid_samples = sample_counts(training, logging)
    seq_length, seed = training.seq_length, training.seed
    if data.mock_data:
        valid = MockGPTDataset(valid_samples, seq_length, vocab_size, seed + 1) if valid_samples else None
        return MockGPTDataset(train_samples, seq_length, vocab_size, seed), valid
    from megatron_ext.data.datasets import build_gpt_datasets, check_token_ids

    if getattr(data, "conversation_data", False):
        return _fine_tuning_datasets(data, training, tokenizer, vocab_size, train_samples, valid_samples)
    fim_rates = _fim_rates(data)
    train, valid, _ = build_gpt_datasets(data.data_path, data.split, seq_length, seed, tokenizer,
                                         (train_samples, valid_samples, 0), data_cache_path=data.data_cache_path)
    if fim_rates:
        # FIM wraps the blend: a sample's dataset_id is its source's index in the
        # mix (blend order), so each source gets its own rates.  Validation is
        # transformed too (other seed), so its loss measures the same task.
        from megatron_ext.data.fim import wrap_with_fim

        train = wrap_with_fim(train, fim_rates, tokenizer, seed, data.fim_split)
        valid = wrap_with_fim(valid, fim_rates, tokenizer, seed + 1, data.fim_split)
    # Outermost, so FIM's sentinel ids are checked too.
    train, valid = (check_token_ids(dataset, vocab_size, data.data_path) for dataset in (train, valid))
    return train, (valid if valid_samples else None)


def _fine_tuning_datasets(data, training, tokenizer, vocab_size, train_samples, valid_samples):
    """Conversations (masked) and plain text, packed per row (data/sft_dataset.py); the packing summary is
    printed once here, on the last rank (the one that logs)."""
    from megatron_ext.data.datasets import check_token_ids
    from megatron_ext.data.sft_dataset import build_sft_datasets
    from megatron_ext.training.parallel import is_last_rank

    if getattr(data, "fim_split", None) and getattr(data, "data_mix", None) and _fim_rates(data):
        raise SystemExit("error: FIM rates in --data-mix apply to pretraining data, not to fine-tuning conversations")
    pad_id = tokenizer.eod if tokenizer is not None else 0
    from megatron_ext.preference.dataset import build_preference_datasets, has_preference_data

    build = build_preference_datasets if has_preference_data(data.data_path) else build_sft_datasets
    train, valid, summary = build(data, training, train_samples, valid_samples, pad_id, vocab_size)
    if is_last_rank():
        print(summary, flush=True)
    return check_token_ids(train, vocab_size, data.data_path), check_token_ids(valid, vocab_size, data.data_path)


def _fim_rates(data):
    """Per-source FIM rates from --data-mix (None without a mix)."""
    if not getattr(data, "data_mix", None):
        return None
    from megatron_ext.data.datamix import load_data_mix

    mix = load_data_mix(data.data_mix)
    if list(data.data_path) != mix.data_path():
        raise SystemExit("error: --data-mix and --data-path are alternatives: give one")
    return mix.fim_rates()


def no_validation_reason(data, logging) -> str | None:
    """Why a run with --eval-interval gets no validation set (None: it gets one, or evaluates never).

    Mirrors build_datasets: no validation samples are asked for with --eval-iters 0, and a --split
    without a validation share builds no validation split."""
    if not getattr(logging, "eval_interval", None):
        return None
    if not logging.eval_iters:
        return "--eval-iters 0 asks for no validation batches"
    if data.mock_data:
        return None
    from megatron.core.datasets.blended_megatron_dataset_config import parse_and_normalize_split

    if parse_and_normalize_split(data.split)[1] == 0:
        return f"--split {data.split} gives the validation split no share (--split 98,2,0 would give it 2%)"
    return None


def describe_data(data, logging) -> str:
    """One start-up line per source: what the run samples from, with what weight, and the FIM it gets;
    and, once, that the run has no validation set when --eval-interval asks for one."""
    summary = _describe_sources(data)
    reason = no_validation_reason(data, logging)
    if reason is None:
        return summary
    return summary + f"\n > no validation: {reason}; --eval-interval {logging.eval_interval} evaluates nothing"


def _describe_sources(data) -> str:
    if data.mock_data:
        return " > data: mock (random tokens)"
    if getattr(data, "data_mix", None):
        from megatron_ext.data.datamix import load_data_mix

        sources = [(s.name, s.weight, s.fim) for s in load_data_mix(data.data_mix).sources]
    else:
        from megatron.core.datasets.utils import get_blend_from_list  # the parse build_gpt_datasets uses

        prefixes, weights = get_blend_from_list(list(data.data_path))
        if weights is None and len(prefixes) > 1:  # build_gpt_datasets then weights them by token count
            return "\n".join([f" > data: {len(prefixes)} source(s), split {data.split}, weighted by their token counts"]
                              + [f"     {prefix}" for prefix in prefixes])
        sources = [(prefix, weight, None) for prefix, weight in zip(prefixes, weights or [1.0])]
    total = sum(weight for _, weight, _ in sources)
    lines = [f" > data: {len(sources)} source(s), split {data.split}"]
    for name, weight, fim in sources:
        fim_text = (f", FIM rate {fim.fim_rate:g} (SPM {fim.spm_rate:g}, {data.fim_split} split)"
                    if fim is not None and fim.fim_rate > 0 else "")
        lines.append(f"     {name}: weight {weight / total:.4f}{fim_text}")
    return "\n".join(lines)
