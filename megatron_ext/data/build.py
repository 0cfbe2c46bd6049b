"""From flags to a tokenizer and the train/validation datasets the loop reads."""

from __future__ import annotations

from megatron_ext.data.loader import MockGPTDataset


def build_vocab(args):
    """(tokenizer or None, vocabulary size). The model's vocabulary follows the tokenizer."""
    if args.mock_data and not args.tokenizer_model:
        if not args.vocab_size:
            raise SystemExit("error: --mock-data without a tokenizer needs --vocab-size (or a --model-preset)")
        return None, args.vocab_size
    from megatron_ext.data.tokenizers import build_tokenizer

    tokenizer = build_tokenizer(args.tokenizer_type, args.tokenizer_model, args.vocab_size,
                                special_tokens=getattr(args, "special_tokens", None),
                                vocab_pad_to=getattr(args, "vocab_pad_to", None))
    return tokenizer, tokenizer.vocab_size


def sample_counts(args) -> tuple[int, int, int]:
    train = args.train_iters * args.global_batch_size
    valid = args.eval_iters * args.global_batch_size if args.eval_interval else 0
    return train, valid, 0


def build_datasets(args, tokenizer, vocab_size: int):
    train_samples, valid_samples, _ = sample_counts(args)
    if args.mock_data:
        valid = MockGPTDataset(valid_samples, args.seq_length, vocab_size, args.seed + 1) if valid_samples else None
        return MockGPTDataset(train_samples, args.seq_length, vocab_size, args.seed), valid
    from megatron_ext.data.datasets import build_gpt_datasets, check_token_ids

    fim_rates = _fim_rates(args)
    train, valid, _ = build_gpt_datasets(args.data_path, args.split, args.seq_length, args.seed, tokenizer,
                                         (train_samples, valid_samples, 0), data_cache_path=args.data_cache_path)
    if fim_rates:
        # FIM wraps the blend: a sample's dataset_id is its source's index in the
        # mix (blend order), so each source gets its own rates.  Validation is
        # transformed too (other seed), so its loss measures the same task.
        from megatron_ext.data.fim import wrap_with_fim

        train = wrap_with_fim(train, fim_rates, tokenizer, args.seed, args.fim_split)
        valid = wrap_with_fim(valid, fim_rates, tokenizer, args.seed + 1, args.fim_split)
    # Outermost, so FIM's sentinel ids are checked too.
    train, valid = (check_token_ids(dataset, vocab_size, args.data_path) for dataset in (train, valid))
    return train, (valid if valid_samples else None)


def _fim_rates(args):
    """Per-source FIM rates from --data-mix (None without a mix)."""
    if not getattr(args, "data_mix", None):
        return None
    from megatron_ext.data.datamix import load_data_mix

    mix = load_data_mix(args.data_mix)
    if list(args.data_path) != mix.data_path():
        raise SystemExit("error: --data-mix and --data-path are alternatives: give one")
    return mix.fim_rates()


def no_validation_reason(args) -> str | None:
    """Why a run with --eval-interval gets no validation set (None: it gets one, or evaluates never).

    Mirrors build_datasets: no validation samples are asked for with --eval-iters 0, and a --split
    without a validation share builds no validation split."""
    if not getattr(args, "eval_interval", None):
        return None
    if not args.eval_iters:
        return "--eval-iters 0 asks for no validation batches"
    if args.mock_data:
        return None
    from megatron.core.datasets.blended_megatron_dataset_config import parse_and_normalize_split

    if parse_and_normalize_split(args.split)[1] == 0:
        return f"--split {args.split} gives the validation split no share (--split 98,2,0 would give it 2%)"
    return None


def _with_validation_notice(args, summary: str) -> str:
    reason = no_validation_reason(args)
    if reason is None:
        return summary
    return summary + f"\n > no validation: {reason}; --eval-interval {args.eval_interval} evaluates nothing"


def describe_data(args) -> str:
    """One start-up line per source: what the run samples from, with what weight, and the FIM it gets;
    and, once, that the run has no validation set when --eval-interval asks for one."""
    return _with_validation_notice(args, _describe_sources(args))


def _describe_sources(args) -> str:
    if args.mock_data:
        return " > data: mock (random tokens)"
    if getattr(args, "data_mix", None):
        from megatron_ext.data.datamix import load_data_mix

        sources = [(s.name, s.weight, s.fim) for s in load_data_mix(args.data_mix).sources]
    else:
        from megatron.core.datasets.utils import get_blend_from_list  # the parse build_gpt_datasets uses

        prefixes, weights = get_blend_from_list(list(args.data_path))
        if weights is None and len(prefixes) > 1:  # build_gpt_datasets then weights them by token count
            return "\n".join([f" > data: {len(prefixes)} source(s), split {args.split}, weighted by their token counts"]
                              + [f"     {prefix}" for prefix in prefixes])
        sources = [(prefix, weight, None) for prefix, weight in zip(prefixes, weights or [1.0])]
    total = sum(weight for _, weight, _ in sources)
    lines = [f" > data: {len(sources)} source(s), split {args.split}"]
    for name, weight, fim in sources:
        fim_text = (f", FIM rate {fim.fim_rate:g} (SPM {fim.spm_rate:g}, {args.fim_split} split)"
                    if fim is not None and fim.fim_rate > 0 else "")
        lines.append(f"     {name}: weight {weight / total:.4f}{fim_text}")
    return "\n".join(lines)
