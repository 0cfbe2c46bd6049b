"""Handing the μP LR / eps / weight-decay rules to an optimizer.

Two paths:

* megatron-core 0.16.1: `mup_config_overrides(rules, optimizer_config)` returns the
  `config_overrides` dict for `get_megatron_optimizer(config, model_chunks, config_overrides=...)`.
  In 0.16.1 `OptimizerParamScheduler` no longer multiplies by a group's `lr_mult`; it schedules
  each group between that group's own `max_lr` and `min_lr`. So a μP LR multiplier is expressed
  by overriding `max_lr` and `min_lr` with the multiplied values. Every schedule megatron has
  (linear, cosine, WSD, inverse-sqrt, constant) is linear in (init_lr, max_lr, min_lr), but the
  scheduler warms every group up from its one `init_lr`: with `lr_warmup_init` > 0 the warm-up
  must start each group at `warmup_init_lr(group, init_lr)` (init_lr x the group's multiplier,
  megatron_ext/training/optimizer.py does this). Then each group's lr is exactly scheduled_lr x
  multiplier at every step. This is a megatron-core workaround, listed (8) in
  megatron_ext/megatron_compat.py; tests/test_megatron_compat.py::test_upstream_still_ignores_lr_mult
  fails once the scheduler honours lr_mult again (it stays here: this package imports no megatron_ext).
* plain torch: `torch_param_groups(...)` builds AdamW param groups with lr x multiplier.

This is the only module of the package that imports megatron-core.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Tuple

import torch

from .rules import ParamClass, Rules, classify


def no_weight_decay_cond(name: str, param: torch.nn.Parameter = None) -> bool:
    """True for parameters that must not be decayed (biases, norm gains) - same in SP and μP.
    Matches the old megatron `no_weight_decay_cond(name, param)` signature."""
    return classify(name) in (ParamClass.BIAS, ParamClass.NORM)


def _group_signature(rules: Rules, name: str) -> Tuple[float, float, float]:
    """(lr multiplier, eps multiplier, weight decay multiplier; 0: not decayed): parameters with equal
    signatures share one optimizer group."""
    return (rules.lr_multiplier(name), rules.adam_eps_multiplier(name),
            rules.weight_decay_multiplier(name))


def _signature_override(signature, lr: float, min_lr: float, adam_eps: float) -> dict:
    """The ParamGroupOverride for one signature; empty if it equals the defaults."""
    lr_mult, eps_mult, wd_mult = signature
    override = {}
    if lr_mult != 1.0:
        override["max_lr"] = lr * lr_mult
        override["min_lr"] = min_lr * lr_mult
        # 0.16.1's scheduler ignores lr_mult, but megatron matches optimizer groups to
        # checkpointed ones by (wd_mult, lr_mult, ...). Labelling the group with its multiplier
        # keeps the 1/m group distinct from the embedding group on checkpoint load; it is also
        # what scales the warm-up's starting lr (warmup_init_lr).
        override["lr_mult"] = lr_mult
    if eps_mult != 1.0:
        override["eps"] = adam_eps * eps_mult  # torch AdamW and TE/apex FusedAdam read group eps
    if wd_mult != 1.0:
        override["wd_mult"] = wd_mult  # the scheduler sets weight_decay = wd x wd_mult every step
    return override


def warmup_init_lr(param_group: dict, init_lr: float) -> float:
    """Where a group's warm-up starts: init_lr x the group's μP LR multiplier (`lr_mult`, set by
    `_signature_override`; 1 for every other group). Its max_lr and min_lr already carry the
    multiplier, so this keeps its lr = multiplier x the schedule during the warm-up too."""
    return init_lr * param_group.get("lr_mult", 1.0)


# One name per (class, inside a layer or not) the rules can tell apart.
PROBE_NAMES = (
    "embedding.word_embeddings.weight", "output_layer.weight",
    "decoder.layers.0.self_attention.linear_qkv.weight",
    "decoder.layers.0.self_attention.linear_proj.weight",
    "decoder.layers.0.mlp.linear_fc1.weight", "decoder.layers.0.mlp.linear_fc2.weight",
    "decoder.layers.0.mlp.linear_fc2.bias", "decoder.layers.0.input_layernorm.weight",
    "decoder.final_layernorm.weight", "decoder.final_layernorm.bias",
)


def _signatures(rules: Rules) -> List[Tuple[float, float, float]]:
    """Every distinct signature the rules can produce, probed with representative names."""
    probe_names = PROBE_NAMES
    sigs = []
    for name in probe_names:
        sig = _group_signature(rules, name)
        if sig not in sigs:
            sigs.append(sig)
    return sigs


def mup_config_overrides(rules: Rules, optimizer_config) -> Dict:
    """`config_overrides` for megatron-core 0.16.1 `get_megatron_optimizer`.

    Keys are `ParamKey`s whose name-predicate classifies each (DDP-prefixed) parameter name;
    values set max_lr/min_lr (x LR multiplier), eps (x eps multiplier, only with
    scale_adam_eps) and wd_mult (0 for biases and norms; 1 / LR multiplier with scale_weight_decay). Passing these REPLACES megatron's
    default overrides (its own bias/1-D no-decay rule), which the BIAS/NORM entry restates.
    `optimizer_config` supplies lr, min_lr and adam_eps; decoupled_lr is rejected because μP
    already fixes the embedding / output LR.
    """
    from megatron.core.optimizer import ParamKey
    from megatron.core.optimizer.optimizer_config import ParamWithNamePredicate

    cfg = optimizer_config
    if cfg.lr is None:
        raise ValueError("mup_config_overrides: optimizer_config.lr must be set")
    if getattr(cfg, "decoupled_lr", None) is not None:
        raise ValueError("mup_config_overrides: decoupled_lr conflicts with μP per-class LRs")
    min_lr = cfg.min_lr if cfg.min_lr is not None else 0.0

    overrides = {}
    for sig in _signatures(rules):
        override = _signature_override(sig, cfg.lr, min_lr, cfg.adam_eps)
        if not override:
            continue  # default group
        predicate = ParamWithNamePredicate(
            # The predicate name is what ParamKey hashes on, so it must identify the signature.
            name=f"mup_lr{sig[0]!r}_eps{sig[1]!r}_wd{int(sig[2])}",
            fn=lambda param, name, sig=sig: _group_signature(rules, name) == sig,
        )
        overrides[ParamKey(with_name_predicate=predicate)] = override
    return overrides


def torch_param_groups(named_params: Iterable[Tuple[str, torch.nn.Parameter]], rules: Rules,
                       lr: float, weight_decay: float = 0.0, eps: float = 1e-8) -> List[dict]:
    """Plain-torch AdamW param groups (lr x multiplier, eps x multiplier, wd x its multiplier: 0 on
    biases/norms),
    for models trained outside megatron (e.g. the coordinate-check test model)."""
    groups: Dict[Tuple[float, float, float], dict] = {}
    for name, param in named_params:
        if not param.requires_grad:
            continue
        sig = _group_signature(rules, name)
        if sig not in groups:
            lr_mult, eps_mult, wd_mult = sig
            groups[sig] = {"params": [], "lr": lr * lr_mult, "eps": eps * eps_mult,
                           "weight_decay": weight_decay * wd_mult, "lr_mult": lr_mult}
        groups[sig]["params"].append(param)
    return list(groups.values())
