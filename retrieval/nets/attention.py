"""CBAM-style attention on feature maps: a channel gate, a spatial gate, and both in sequence."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ChannelAttention(nn.Module):
    """Scale each channel by a gate in (0, 1) computed from the whole map.

    Global average and global max pooling of x (B, C, H, W) each go through one shared MLP
    (1×1 convs C -> max(1, C // reduction) -> C with ReLU between); the two outputs are summed and
    passed through a sigmoid, giving a (B, C, 1, 1) gate. Returns ``x * gate``, shape (B, C, H, W).
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        if channels < 1 or reduction < 1:
            raise ValueError(f"channels and reduction must be >= 1 (got {channels}, {reduction})")
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, kernel_size=1),
        )

    def gate(self, x: Tensor) -> Tensor:
        """(B, C, 1, 1) gate in (0, 1) for x (B, C, H, W)."""
        avg = x.mean(dim=(2, 3), keepdim=True)
        peak = x.amax(dim=(2, 3), keepdim=True)
        return torch.sigmoid(self.mlp(avg) + self.mlp(peak))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(x)


class SpatialAttention(nn.Module):
    """Scale each position by a gate in (0, 1) computed across channels.

    The channel-wise mean and max of x (B, C, H, W) form a (B, 2, H, W) map; a k×k conv
    (padding k // 2, so k must be odd) and a sigmoid give a (B, 1, H, W) gate. Returns
    ``x * gate``, shape (B, C, H, W). ``last_map`` holds the gate of the last forward, detached
    (None before the first), for display.
    """

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and >= 1 (got {kernel_size})")
        self.conv = nn.Conv2d(2, 1, kernel_size=kernel_size, padding=kernel_size // 2)
        self.last_map: Tensor | None = None

    def gate(self, x: Tensor) -> Tensor:
        """(B, 1, H, W) gate in (0, 1) for x (B, C, H, W)."""
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(pooled))

    def forward(self, x: Tensor) -> Tensor:
        gate = self.gate(x)
        self.last_map = gate.detach()
        return x * gate


class CBAM(nn.Module):
    """Channel attention then spatial attention (Woo et al. 2018); (B, C, H, W) in and out.

    Both gates lie in (0, 1), so the module only scales features down; ``attention_map`` is the
    spatial gate (B, 1, H, W) of the last forward, detached, or None before the first.
    """

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7) -> None:
        super().__init__()
        self.channel = ChannelAttention(channels, reduction)
        self.spatial = SpatialAttention(kernel_size)

    @property
    def attention_map(self) -> Tensor | None:
        return self.spatial.last_map

    def forward(self, x: Tensor) -> Tensor:
        return self.spatial(self.channel(x))
