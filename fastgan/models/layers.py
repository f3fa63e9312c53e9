"""Layers whose bias and activation run as one fused ``bias_act`` (fastgan.kernels), and
convolutions that take their weights channels_last.

They subclass torch's layers, so parameters, initialisation and state-dict keys are
those of ``nn.Linear`` / ``nn.Conv2d``; only the forward changes: the product without
bias, then bias + activation in one pass (one Triton kernel on a GPU), with first- and
second-order gradients for R1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels


class LinearAct(nn.Linear):
    def __init__(self, in_features: int, out_features: int, act: str,
                 alpha: float | None = None, gain: float | None = None):
        super().__init__(in_features, out_features, bias=True)
        self.act, self.alpha, self.gain = act, alpha, gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.bias_act(F.linear(x, self.weight), self.bias, dim=1, act=self.act,
                                alpha=self.alpha, gain=self.gain)


class ChannelsLastWeight:
    """For convolutions: with ``weight_copy_channels_last`` set, the weight enters every
    call as a channels_last copy. build.py sets it under DeepSpeed, whose weights stay
    contiguous (views of its flat buffers): copying a weight each call costs less than a
    convolution on contiguous weights (BENCHMARKS.md). Elsewhere the weights are stored
    channels_last and enter as they are."""

    weight_copy_channels_last = False

    def conv_weight(self) -> torch.Tensor:
        if self.weight_copy_channels_last:
            return self.weight.contiguous(memory_format=torch.channels_last)
        return self.weight


def copy_weights_channels_last(module: nn.Module) -> None:
    """Make every convolution of ``module`` take its weight as a channels_last copy."""
    for m in module.modules():
        if isinstance(m, ChannelsLastWeight):
            m.weight_copy_channels_last = True


class Conv2d(ChannelsLastWeight, nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.conv_weight(), self.bias)


class ConvTranspose2d(ChannelsLastWeight, nn.ConvTranspose2d):
    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        output_padding = self._output_padding(x, output_size, self.stride, self.padding,
                                              self.kernel_size, 2, self.dilation)
        return F.conv_transpose2d(x, self.conv_weight(), self.bias, self.stride,
                                  self.padding, output_padding, self.groups, self.dilation)


class Conv2dAct(ChannelsLastWeight, nn.Conv2d):
    def __init__(self, *args, act: str, alpha: float | None = None,
                 gain: float | None = None, **kwargs):
        super().__init__(*args, bias=True, **kwargs)
        self.act, self.alpha, self.gain = act, alpha, gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.bias_act(self._conv_forward(x, self.conv_weight(), None), self.bias, dim=1,
                                act=self.act, alpha=self.alpha, gain=self.gain)
