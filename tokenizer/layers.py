"""1-D convolutional blocks shared by the mel and waveform VQ-VAEs."""

from __future__ import annotations

from torch import nn


class ResBlock(nn.Module):
    """x + conv1x1(gelu(dilated conv3(gelu(x)))), as in Jukebox's Resnet1D."""

    def __init__(self, channels: int, dilation: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.GELU(),
            nn.Conv1d(channels, channels, 3, padding=dilation, dilation=dilation),
            nn.GELU(),
            nn.Conv1d(channels, channels, 1),
        )

    def forward(self, x):  # (B, C, T) -> (B, C, T)
        return x + self.net(x)


def res_stack(channels: int, depth: int, reverse: bool = False) -> nn.Sequential:
    """`depth` residual blocks with dilations 1, 3, 9, ... (reversed in decoders)."""
    dilations = [3**i for i in range(depth)]
    if reverse:
        dilations = dilations[::-1]
    return nn.Sequential(*[ResBlock(channels, d) for d in dilations])


def receptive_field(module: nn.Module) -> int:
    """Upper bound of the receptive field, in input units, of the convolutions in `module` run in
    registration order (residual branches included, so it over-counts, which is the safe side)."""
    rf, jump = 1, 1
    for m in module.modules():
        if isinstance(m, nn.Conv1d):
            rf += (m.kernel_size[0] - 1) * m.dilation[0] * jump
            jump *= m.stride[0]
    return rf
