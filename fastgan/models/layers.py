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
    """For convolutions: the weight enters every call channels_last. Under none and DDP
    the weights are stored channels_last (``module.to(memory_format=...)``) and enter as
    they are. DeepSpeed keeps every parameter a contiguous view of its flat buffers (its
    broadcast fails on channels_last ones), so there :func:`store_weights_permuted`
    stores each weight contiguous in the shape (dim 0, kh, kw, dim 1): the memory order
    of channels_last, entering every call as a channels_last view of it, with no copy (a
    copy per call cost DeepSpeed 3% of a DCGAN step; BENCHMARKS.md). State dicts keep
    torch's shape: hooks permute the weight on the way out and in."""

    weight_permuted = False

    def conv_weight(self) -> torch.Tensor:
        if self.weight_permuted:
            return self.weight.permute(0, 3, 1, 2)
        return self.weight


def store_weights_permuted(module: nn.Module) -> None:
    """Store every convolution weight of ``module`` permuted (see ChannelsLastWeight)."""
    for m in module.modules():
        if isinstance(m, ChannelsLastWeight) and not m.weight_permuted:
            m.weight = nn.Parameter(m.weight.detach().permute(0, 2, 3, 1).contiguous(),
                                    requires_grad=m.weight.requires_grad)
            m.weight_permuted = True
            m.register_state_dict_post_hook(_weight_in_torch_shape)
            m.register_load_state_dict_pre_hook(_weight_in_stored_shape)


def _weight_in_torch_shape(module: nn.Module, state_dict: dict, prefix: str,
                           local_metadata: dict) -> None:
    key = prefix + "weight"
    if key in state_dict:
        state_dict[key] = state_dict[key].permute(0, 3, 1, 2)


def _weight_in_stored_shape(module: nn.Module, state_dict: dict, prefix: str,
                            local_metadata: dict, strict: bool, missing_keys: list,
                            unexpected_keys: list, error_msgs: list) -> None:
    key = prefix + "weight"
    if key in state_dict and state_dict[key].dim() == 4:
        state_dict[key] = state_dict[key].permute(0, 2, 3, 1)


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
