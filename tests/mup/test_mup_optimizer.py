"""μP optimizer groups through megatron-core 0.16.1's own group builder and LR scheduler."""

import os
import socket

import pytest
import torch

from megatron.core.optimizer import OptimizerConfig, _get_param_groups
from megatron.core.optimizer.optimizer import param_group_identifier_keys
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from mup import MuPConfig, MuPRules, StandardRules
from mup.optimizer import mup_config_overrides, no_weight_decay_cond, torch_param_groups

HIDDEN, FFN, VOCAB, LAYERS = 128, 512, 300, 2
LR, MIN_LR, WD, EPS = 0.012, 1.2e-4, 0.1, 1e-8


@pytest.fixture(scope="module", autouse=True)
def single_process_group():
    """_get_param_groups all-gathers group keys, so it needs a (1-process, gloo) group."""
    if torch.distributed.is_initialized():
        yield
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}",
                                         rank=0, world_size=1)
    yield
    torch.distributed.destroy_process_group()


def _gpt_param_shapes():
    """The parameter names / shapes a megatron-core GPTModel (local spec, biases) has."""
    shapes = {"embedding.word_embeddings.weight": (VOCAB, HIDDEN),
              "decoder.final_layernorm.weight": (HIDDEN,), "decoder.final_layernorm.bias": (HIDDEN,),
              "output_layer.weight": (VOCAB, HIDDEN)}
    for i in range(LAYERS):
        p = f"decoder.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (HIDDEN,), p + "input_layernorm.bias": (HIDDEN,),
            p + "self_attention.linear_qkv.weight": (3 * HIDDEN, HIDDEN),
            p + "self_attention.linear_qkv.bias": (3 * HIDDEN,),
            p + "self_attention.linear_proj.weight": (HIDDEN, HIDDEN),
            p + "self_attention.linear_proj.bias": (HIDDEN,),
            p + "pre_mlp_layernorm.weight": (HIDDEN,), p + "pre_mlp_layernorm.bias": (HIDDEN,),
            p + "mlp.linear_fc1.weight": (2 * FFN, HIDDEN), p + "mlp.linear_fc1.bias": (2 * FFN,),
            p + "mlp.linear_fc2.weight": (HIDDEN, FFN), p + "mlp.linear_fc2.bias": (HIDDEN,),
        })
    return shapes


def _module_tree(shapes):
    """nn.Module whose named_parameters() are exactly `shapes`' names, wrapped like DDP
    (`module.` prefix) since that is what get_megatron_optimizer iterates over."""
    root = torch.nn.Module()
    for name, shape in shapes.items():
        *path, leaf = name.split(".")
        node = root
        for part in path:
            if not hasattr(node, part):
                node.add_module(part, torch.nn.Module())
            node = getattr(node, part)
        node.register_parameter(leaf, torch.nn.Parameter(torch.randn(shape) * 0.02))
    wrapper = torch.nn.Module()
    wrapper.module = root
    return wrapper


def _mup_rules(**extra):
    return MuPRules(MuPConfig(hidden_size=HIDDEN, base_hidden_size=32, num_layers=LAYERS,
                              ffn_hidden_size=FFN, num_attention_heads=8, head_dim=16,
                              base_init_std=0.073, **extra))


def _expected_schedule(step, warmup=3, decay=10):
    if step <= warmup:
        return LR * step / warmup
    if step > decay:
        return MIN_LR
    return MIN_LR + (1 - (step - warmup) / (decay - warmup)) * (LR - MIN_LR)


def _build(rules):
    model = _module_tree(_gpt_param_shapes())
    config = OptimizerConfig(optimizer="adam", lr=LR, min_lr=MIN_LR, weight_decay=WD, adam_eps=EPS)
    groups = _get_param_groups([model], config, mup_config_overrides(rules, config))
    optimizer = torch.optim.AdamW(groups, lr=LR, weight_decay=WD, eps=EPS)
    scheduler = OptimizerParamScheduler(
        optimizer, init_lr=0.0, max_lr=LR, min_lr=MIN_LR, lr_warmup_steps=3, lr_decay_steps=10,
        lr_decay_style="linear", start_wd=WD, end_wd=WD, wd_incr_steps=10, wd_incr_style="constant")
    names = {id(p): n for n, p in model.named_parameters()}
    return model, optimizer, scheduler, names


@pytest.mark.parametrize("scale_eps", [False, True])
def test_megatron_groups_follow_mup_rules_at_every_step(scale_eps):
    rules = _mup_rules(scale_adam_eps=scale_eps)
    model, optimizer, scheduler, names = _build(rules)
    # hidden(1/m, decayed), embedding+output (1, decayed), biases+norms (1, no decay)
    assert len(optimizer.param_groups) == 3
    seen = sum(len(g["params"]) for g in optimizer.param_groups)
    assert seen == len(list(model.parameters()))
    for step in range(13):
        if step:
            scheduler.step(1)
        expected_lr = _expected_schedule(step)
        for group in optimizer.param_groups:
            for p in group["params"]:
                name = names[id(p)]
                assert group["lr"] == pytest.approx(expected_lr * rules.lr_multiplier(name),
                                                    rel=1e-12, abs=1e-15), (step, name)
                expected_wd = WD if rules.weight_decay_applies(name) else 0.0
                assert group["weight_decay"] == expected_wd, name
                assert no_weight_decay_cond(name, p) == (expected_wd == 0.0)
                assert group["eps"] == pytest.approx(EPS * rules.adam_eps_multiplier(name))
    # spot-check the classes directly: m = 4
    lr_of = {names[id(p)].split(".", 1)[1]: g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert lr_of["decoder.layers.1.mlp.linear_fc2.weight"] == pytest.approx(MIN_LR / 4)
    assert lr_of["decoder.layers.0.self_attention.linear_qkv.weight"] == pytest.approx(MIN_LR / 4)
    assert lr_of["decoder.layers.0.self_attention.linear_qkv.bias"] == pytest.approx(MIN_LR)
    assert lr_of["output_layer.weight"] == pytest.approx(MIN_LR)
    # the groups are usable by a real optimizer step
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()


def test_groups_stay_distinct_for_checkpoint_matching():
    # megatron matches checkpointed groups by (wd_mult, lr_mult, is_expert_parallel,
    # is_decoupled_lr): the 1/m group must not collide with the embedding group.
    _, optimizer, _, _ = _build(_mup_rules())
    keys = [tuple(g[k] for k in param_group_identifier_keys) for g in optimizer.param_groups]
    assert len(set(keys)) == len(keys)


def test_different_ffn_and_attention_multipliers_get_separate_groups():
    rules = _mup_rules(base_ffn_hidden_size=64, base_num_attention_heads=4)  # m_ffn 8, m_attn 2
    model, optimizer, scheduler, names = _build(rules)
    scheduler.step(3)  # end of warm-up: lr = LR x multiplier
    lrs = {names[id(p)].rsplit(".", 3)[-2]: g["lr"] for g in optimizer.param_groups
           for p in g["params"] if names[id(p)].endswith(".weight")}
    assert lrs["linear_fc2"] == pytest.approx(LR / 8)
    assert lrs["linear_proj"] == pytest.approx(LR / 2)
    assert lrs["linear_qkv"] == lrs["linear_fc1"] == pytest.approx(LR / 4)
    assert lrs["word_embeddings"] == lrs["output_layer"] == pytest.approx(LR)


def test_standard_rules_only_skip_decay():
    _, optimizer, scheduler, names = _build(StandardRules(0.02, num_layers=LAYERS))
    assert len(optimizer.param_groups) == 2
    scheduler.step(3)
    for g in optimizer.param_groups:
        assert g["lr"] == pytest.approx(LR)


def test_decoupled_lr_is_rejected():
    config = OptimizerConfig(optimizer="adam", lr=LR, min_lr=MIN_LR, decoupled_lr=1e-3)
    with pytest.raises(ValueError, match="decoupled_lr"):
        mup_config_overrides(_mup_rules(), config)


def test_torch_param_groups():
    rules = _mup_rules(scale_adam_eps=True)
    model = _module_tree(_gpt_param_shapes())
    groups = torch_param_groups(model.named_parameters(), rules, lr=LR, weight_decay=WD, eps=EPS)
    by_param = {id(p): g for g in groups for p in g["params"]}
    for name, p in model.named_parameters():
        g = by_param[id(p)]
        assert g["lr"] == pytest.approx(LR * rules.lr_multiplier(name))
        assert g["eps"] == pytest.approx(EPS * rules.adam_eps_multiplier(name))
        assert g["weight_decay"] == (WD if rules.weight_decay_applies(name) else 0.0)
    torch.optim.AdamW(groups)


@pytest.fixture
def cpu_megatron_optimizer(monkeypatch):
    """What get_megatron_optimizer needs on one CPU process: the model-parallel state, and (FP32Optimizer
    allocates a CUDA tensor in __init__) a stand-in for FP32Optimizer that keeps the inner torch optimizer,
    the object whose param_groups the scheduler drives."""
    import megatron.core.optimizer as mcore_opt
    from megatron.core import parallel_state

    class InnerOnly:
        def __init__(self, optimizer, config, init_state_fn):
            self.optimizer = optimizer

        @property
        def param_groups(self):
            return self.optimizer.param_groups

    if not torch.cuda.is_available():
        monkeypatch.setattr(mcore_opt, "FP32Optimizer", InnerOnly)
    owns_parallel_state = not parallel_state.model_parallel_is_initialized()
    if owns_parallel_state:
        parallel_state.initialize_model_parallel()
    yield
    if owns_parallel_state:
        parallel_state.destroy_model_parallel()


def _ddp_like_model():
    from megatron.core.distributed import DistributedDataParallelConfig

    model = _module_tree(_gpt_param_shapes())
    model.ddp_config = DistributedDataParallelConfig()
    return model


def test_get_megatron_optimizer_end_to_end(cpu_megatron_optimizer):
    """The public entry point accepts the overrides and builds its Adam from these groups."""
    import megatron.core.optimizer as mcore_opt

    rules = _mup_rules()
    model = _ddp_like_model()
    config = OptimizerConfig(optimizer="adam", lr=LR, min_lr=MIN_LR, weight_decay=WD, adam_eps=EPS)
    optimizer = mcore_opt.get_megatron_optimizer(
        config, [model], config_overrides=mup_config_overrides(rules, config))
    scheduler = OptimizerParamScheduler(
        optimizer, init_lr=0.0, max_lr=LR, min_lr=MIN_LR, lr_warmup_steps=3,
        lr_decay_steps=10, lr_decay_style="linear", start_wd=WD, end_wd=WD,
        wd_incr_steps=10, wd_incr_style="constant")
    scheduler.step(5)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = optimizer.param_groups
    assert sum(len(g["params"]) for g in groups) == len(names)
    for g in groups:
        for p in g["params"]:
            name = names[id(p)]
            assert g["lr"] == pytest.approx(_expected_schedule(5) * rules.lr_multiplier(name))
            assert g["weight_decay"] == (WD if rules.weight_decay_applies(name) else 0.0)


@pytest.mark.parametrize("decay_style", ["linear", "cosine"])
def test_warmup_from_lr_warmup_init_keeps_mup_multipliers(cpu_megatron_optimizer, decay_style):
    """--lr-warmup-init > 0: during the warm-up too, every group's lr is its μP multiplier x the schedule.
    megatron-core warms every group up from the one init_lr, which breaks that unless our scheduler scales
    the starting point per group. megatron's optimizer with the μP groups, the project's build_scheduler
    from parsed flags."""
    import megatron.core.optimizer as mcore_opt

    from megatron_ext.arguments import parse_args
    from megatron_ext.training.optimizer import build_scheduler

    warmup, iters, init = 4, 10, LR / 3
    args = parse_args([str(a) for a in ["--model-preset", "tiny", "--mock-data", "--device", "cpu", "--use-mup",
                       "--hidden-size", HIDDEN, "--mup-base-hidden-size", 32, "--global-batch-size", 1,
                       "--train-iters", iters, "--lr", LR, "--min-lr", MIN_LR, "--lr-warmup-init", init,
                       "--lr-warmup-iters", warmup, "--lr-decay-style", decay_style, "--weight-decay", WD,
                       "--adam-eps", EPS]], world_size=1)
    rules = _mup_rules()  # the same m = 4 as the flags
    model = _ddp_like_model()
    config = OptimizerConfig(optimizer="adam", lr=LR, min_lr=MIN_LR, weight_decay=WD, adam_eps=EPS)
    optimizer = mcore_opt.get_megatron_optimizer(config, [model],
                                                 config_overrides=mup_config_overrides(rules, config))
    scheduler = build_scheduler(args, optimizer)
    names = {id(p): n for n, p in model.named_parameters()}
    multipliers = {rules.lr_multiplier(n) for n in names.values()}
    assert multipliers == {1.0, 0.25}
    reference = OptimizerParamScheduler(  # one plain group: the schedule itself
        torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LR), init_lr=init, max_lr=LR,
        min_lr=MIN_LR, lr_warmup_steps=warmup, lr_decay_steps=iters, lr_decay_style=decay_style,
        start_wd=WD, end_wd=WD, wd_incr_steps=iters, wd_incr_style="constant")
    for step in range(iters + 1):
        if step:
            scheduler.step(1)
            reference.step(1)
        schedule_lr = reference.optimizer.param_groups[0]["lr"]
        if step == 0:
            assert schedule_lr == pytest.approx(init)
        for group in optimizer.param_groups:
            for p in group["params"]:
                assert group["lr"] == pytest.approx(rules.lr_multiplier(names[id(p)]) * schedule_lr,
                                                    rel=1e-12), (step, names[id(p)])
