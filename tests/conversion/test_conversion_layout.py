"""Layout maps the formats rely on, checked against the project's own kernels: reordering q/k
channels turns interleaved RoPE into half-split RoPE and back (full and partial); the fused QKV and
[gate; up] layouts pack and unpack exactly; a streamed safetensors file reads back."""

import pytest
import torch
from safetensors.torch import load_file

from megatron_ext import kernels
from megatron_ext.checkpoint.hf_arch import (half_split_to_interleaved, interleaved_to_half_split, pack_qkv,
                                             permute_head_channels, unpack_qkv)
from megatron_ext.checkpoint.hf_files import SafetensorsStreamWriter, plan_shards
from megatron_ext.layers.attention import rotary_inv_freq
from megatron_ext.models.identity import ModelIdentity


def _rope(x, rotary_percent, interleaved):
    seq, _, _, head_dim = x.shape
    angles = torch.outer(torch.arange(seq, dtype=torch.float32), rotary_inv_freq(head_dim, rotary_percent, 10000.0))
    return kernels.apply_rotary(x, x.clone(), angles, interleaved=interleaved, impl="torch")[0]


def _per_head(x, perm):  # x [s, b, heads, d]: reorder channels as the weight permutation does
    return x[..., perm]


@pytest.mark.parametrize("rotary_percent", [1.0, 0.25])
def test_channel_reordering_converts_rope_conventions(rotary_percent):
    torch.manual_seed(0)
    head_dim = 16
    rotary_dim = int(head_dim * rotary_percent)
    x = torch.randn(6, 2, 3, head_dim)
    to_half = interleaved_to_half_split(head_dim, rotary_dim)
    to_interleaved = half_split_to_interleaved(head_dim, rotary_dim)
    # Rotating reordered channels the other way = reordering the rotated channels.
    torch.testing.assert_close(_rope(_per_head(x, to_half), rotary_percent, interleaved=False),
                               _per_head(_rope(x, rotary_percent, interleaved=True), to_half))
    torch.testing.assert_close(_rope(_per_head(x, to_interleaved), rotary_percent, interleaved=True),
                               _per_head(_rope(x, rotary_percent, interleaved=False), to_interleaved))
    # The weight-side helper applies the same reordering to every head of a projection.
    weight = torch.randn(3 * head_dim, 5)
    expected = weight.reshape(3, head_dim, 5)[:, to_half].reshape(-1, 5)
    assert torch.equal(permute_head_channels(weight, head_dim, to_half), expected)


def test_qkv_packing_is_grouped_per_query_group_and_inverts():
    # Odd head dim (3) so rows of q, k and v cannot line up by accident; RoPE on 2 of its 3 channels.
    model = ModelIdentity(num_layers=1, hidden_size=8, ffn_hidden_size=8, num_attention_heads=4, num_query_groups=2,
                          kv_channels=3, rotary_percent=2 / 3, vocab_size=8)
    q = torch.arange(12 * 2).reshape(12, 2)
    k, v = 100 + torch.arange(6 * 2).reshape(6, 2), -torch.arange(1, 13).reshape(6, 2)
    packed = pack_qkv(q, k, v, groups=2)
    # group 0: q heads 0-1 (6 rows), k head 0 (3 rows), v head 0 (3 rows); then group 1.
    assert torch.equal(packed[:6], q[:6]) and torch.equal(packed[6:9], k[:3]) and torch.equal(packed[9:12], v[:3])
    assert torch.equal(packed[12:18], q[6:]) and torch.equal(packed[18:21], k[3:])
    for a, b in zip(unpack_qkv(packed, model), (q, k, v)):
        assert torch.equal(a, b)


def test_streamed_safetensors_read_back(tmp_path):
    tensors = {"a": torch.randn(3, 5), "b": torch.arange(7, dtype=torch.int64),
               "c": torch.randn(4, 4).to(torch.bfloat16), "d": torch.randn(2, 3, 2).to(torch.float16)}
    entries = [(n, tuple(t.shape), t.dtype) for n, t in tensors.items()]
    shards = plan_shards(entries, [2, 1, 1], max_shard_bytes=80)
    writer = SafetensorsStreamWriter(str(tmp_path), shards)
    for name, tensor in tensors.items():
        writer.write(name, tensor)
    writer.close()
    files = sorted(tmp_path.glob("*.safetensors"))
    assert len(files) == len(shards) > 1 and (tmp_path / "model.safetensors.index.json").is_file()
    read = {k: v for f in files for k, v in load_file(f).items()}
    for name, tensor in tensors.items():
        assert read[name].dtype == tensor.dtype and torch.equal(read[name], tensor), name
