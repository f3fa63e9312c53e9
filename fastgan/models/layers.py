"""Layers whose bias and activation run as one fused ``bias_act`` (fastgan.kernels).

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


class Conv2dAct(nn.Conv2d):
    def __init__(self, *args, act: str, alpha: float | None = None,
                 gain: float | None = None, **kwargs):
        super().__init__(*args, bias=True, **kwargs)
        self.act, self.alpha, self.gain = act, alpha, gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.bias_act(self._conv_forward(x, self.weight, None), self.bias, dim=1,
                                act=self.act, alpha=self.alpha, gain=self.gain)
