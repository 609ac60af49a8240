"""CBAM-style attention: shapes, gate ranges, the stored spatial map, gradients."""

from __future__ import annotations

import pytest
import torch

from retrieval.nets.attention import CBAM, ChannelAttention, SpatialAttention


@pytest.fixture
def x() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.rand(2, 32, 7, 9) + 0.1


@pytest.mark.parametrize(
    "module",
    [ChannelAttention(32, reduction=8), SpatialAttention(kernel_size=5), CBAM(32)],
    ids=["channel", "spatial", "cbam"],
)
def test_output_shape_equals_input_and_gradient_flows(
    module: torch.nn.Module, x: torch.Tensor
) -> None:
    x = x.clone().requires_grad_(True)
    out = module(x)
    assert out.shape == x.shape
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in module.parameters())
    # Both gates lie in (0, 1), so every (positive) feature shrinks but stays positive.
    assert ((out > 0) & (out < x)).all()


def test_channel_gate_is_one_value_per_channel(x: torch.Tensor) -> None:
    module = ChannelAttention(32, reduction=4)
    gate = module.gate(x)
    assert gate.shape == (2, 32, 1, 1)
    assert ((gate > 0) & (gate < 1)).all()
    ratio = module(x) / x
    assert torch.allclose(ratio, ratio[:, :, :1, :1].expand_as(ratio), atol=1e-6)


def test_channel_attention_handles_channels_below_reduction() -> None:
    assert ChannelAttention(4, reduction=16)(torch.rand(1, 4, 3, 3)).shape == (1, 4, 3, 3)


def test_spatial_gate_is_one_value_per_position_and_kept(x: torch.Tensor) -> None:
    module = SpatialAttention()
    assert module.last_map is None
    out = module(x)
    gate = module.last_map
    assert gate is not None and gate.shape == (2, 1, 7, 9)
    assert not gate.requires_grad
    assert ((gate > 0) & (gate < 1)).all()
    assert torch.allclose(out, x * gate, atol=1e-6)


def test_spatial_kernel_must_be_odd() -> None:
    with pytest.raises(ValueError, match="odd"):
        SpatialAttention(kernel_size=4)


def test_cbam_attention_map_after_forward(x: torch.Tensor) -> None:
    module = CBAM(32, reduction=8, kernel_size=3)
    assert module.attention_map is None
    module(x.requires_grad_(True))
    first = module.attention_map
    assert first is not None and first.shape == (2, 1, 7, 9)
    assert first.grad_fn is None
    module(x[:1, :, :4, :5])
    assert module.attention_map is not None and module.attention_map.shape == (1, 1, 4, 5)
