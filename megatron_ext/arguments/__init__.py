"""Command-line flags of pretrain_llama.py: Megatron-LM's names, grouped by concern.

parse_config() returns them as typed, frozen configs by concern (arguments/configs.py), what the library
takes; parse_args() the validated flags themselves (read-only). Both apply --model-preset (and, with --load,
the checkpoint's model identity) as defaults, so any explicit flag overrides them; map the model flags onto one
ModelIdentity (`args.model_identity`: the individual model flags leave the namespace, so nothing reads a stale
copy); and validate the layout before any process group exists.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from megatron_ext.arguments.checkpoint import add_checkpoint_args
from megatron_ext.arguments.configs import RunConfig
from megatron_ext.arguments.data import add_data_args
from megatron_ext.arguments.from_checkpoint import checkpoint_model_flags, checkpoint_tokenizer_flags
from megatron_ext.arguments.logging import add_logging_args
from megatron_ext.arguments.model import add_model_args
from megatron_ext.arguments.mup import add_mup_args
from megatron_ext.arguments.parallel import add_parallel_args
from megatron_ext.arguments.training import add_training_args
from megatron_ext.arguments.validate import fill_defaults, validate
from megatron_ext.preference.arguments import add_dpo_args
from megatron_ext.models.identity import ModelIdentity, model_flag_names
from megatron_ext.models.presets import preset_flags

ARG_GROUPS = (add_model_args, add_parallel_args, add_training_args, add_data_args,
              add_checkpoint_args, add_logging_args, add_mup_args, add_dpo_args)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows each flag's default, unless it has none (None/False) or the help text says it."""

    def _get_help_string(self, action):
        help_text = action.help or ""
        if "default" in help_text or action.default is None or action.default is False \
                or action.default == argparse.SUPPRESS or not action.option_strings:
            return help_text
        return help_text + " (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's default prints usage then a terse line; name the fix
        self.exit(2, f"{self.prog}: error: {message}\n(run with --help for the list of flags)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pretrain_llama.py", description="Pretrain a LLaMA-family model on megatron-core.",
                     allow_abbrev=False, formatter_class=_HelpFormatter)
    for add in ARG_GROUPS:
        add(parser)
    return parser


def parse_args(argv: list[str] | None = None, world_size: int | None = None,
               defaults: dict | None = None) -> argparse.Namespace:
    """defaults: extra flag defaults (argparse destinations) below the preset's, e.g. a ModelIdentity's
    as_flags() to build the run of a model held in memory."""
    parser = build_parser()
    args = parser.parse_args(argv)  # unknown flags stop here with argparse's message
    # Precedence: explicit flag > the model flags of the checkpoint being loaded > preset > given defaults.
    defaults = dict(defaults or {})
    if args.model_preset:
        defaults.update(preset_flags(args.model_preset))
    # The run's own checkpoint when resuming; else the one a fine-tuning run starts from (its weights only).
    source = args.load if args.load and checkpoint_model_flags(args.load) else args.pretrained_checkpoint
    if source:
        defaults.update(checkpoint_model_flags(source))
        given = sys.argv[1:] if argv is None else [str(a) for a in argv]
        if not args.mock_data and not any(a.startswith(("--tokenizer-", "--special-tokens", "--vocab-pad-to"))
                                          for a in given):
            defaults.update(checkpoint_tokenizer_flags(source))
    if defaults:
        parser.set_defaults(**defaults)
        args = parser.parse_args(argv)
    fill_defaults(args)
    identity = ModelIdentity.from_flags(args)
    for name in model_flag_names():
        delattr(args, name)
    args.model_identity = identity
    if world_size is None:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
    validate(args, world_size)
    return _read_only(args)


def parse_config(argv: list[str] | None = None, world_size: int | None = None,
                 defaults: dict | None = None) -> RunConfig:
    """The validated flags as typed configs by concern (arguments/configs.py): what the library takes."""
    return RunConfig.from_flags(parse_args(argv, world_size, defaults))


class Flags(argparse.Namespace):
    """The validated flags, read-only: what a run was given, never a place to pass values along."""

    def __setattr__(self, name, value):
        raise AttributeError(f"the validated flags are read-only (setting {name!r}): derive the value in "
                             "arguments/validate.py, or pass it explicitly")


def _read_only(args: argparse.Namespace) -> Flags:
    flags = Flags.__new__(Flags)
    flags.__dict__.update(vars(args))
    return flags


def flat_flags(args: argparse.Namespace) -> dict:
    """Every setting of the run as one flat dict (the model identity's fields among the flags), for
    TensorBoard's arguments table and W&B's config."""
    flags = {k: v for k, v in vars(args).items() if k != "model_identity"}
    return {**flags, **dataclasses.asdict(args.model_identity)}
