"""StyleGAN2 (Karras et al., 2020): config F's generator and residual discriminator.

Generator: a mapping network (8 equalised-LR fully connected layers, lr x0.01) turns z
into w; a synthesis network starts from a learned 4x4 constant and, at every
resolution, runs two modulated 3x3 convolutions (the first upsampling), each followed
by per-pixel noise and bias + LeakyReLU, and a toRGB (1x1, modulated, not demodulated)
whose output is added to the upsampled image so far (the "skip" architecture).
Discriminator: fromRGB at full resolution, then residual blocks (two 3x3 convolutions,
the second downsampling, beside a 1x1 downsampling skip, summed with gain sqrt(1/2))
down to 4x4, minibatch standard deviation, a 3x3 convolution and two fully connected
layers to one logit (or, with labels, a projection onto the label's embedding).

Choices (plain PyTorch ops everywhere except bias + activation):
* Every weight is stored N(0, 1) and scaled at run time by 1/sqrt(fan_in) (equalised
  learning rate), every bias + activation is ``fastgan.kernels.bias_act``.
* Up- and downsampling use the [1, 3, 3, 1] low-pass filter (outer product, sum 1),
  separable and written as shifted adds (see ``blur``): upsampling in polyphase form
  (zero insertion and filtering in one, gain 4), downsampling as padding and filtering
  with a stride of 2. The upsampling 3x3 layer is a stride-2 transposed convolution followed
  by the filter, and the downsampling one the filter followed by a stride-2
  convolution, as in NVlabs' code, so no layer runs at the higher resolution for nothing.
* Modulation and demodulation act on the activations, not the weights
  (``x * s``, a convolution shared by the batch, then ``* d``), which is the same
  function as a per-sample modulated weight (tested) but runs as one ordinary
  convolution over the batch.
* Style mixing (``style_mixing``, a probability; 0: off), only while G trains: with
  that probability per batch, the layers from a crossover drawn uniformly in
  [1, num_ws) take their w from a second latent. The crossover and the coin are drawn
  on the device and applied as a mask over the layers, so no value is read back.
* Mixed precision as StyleGAN2-ADA: under an fp16 autocast only the ``num_fp16_res``
  highest resolutions run in fp16, with activations clamped to +-``clamp`` (256), and
  the rest in fp32 (fp16's range is too narrow for the low-resolution layers, whose
  activations and gradients are the largest). Under bf16 (fp32's range) every layer
  runs in bf16.
"""

from __future__ import annotations

import contextlib
import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels

_LOWPASS_1D = (1.0, 3.0, 3.0, 1.0)


def _taps(x: torch.Tensor, dim: int, k: int, length: int, stride: int) -> torch.Tensor:
    """Elements k, k + stride, ... (``length`` of them) of ``x`` along ``dim``."""
    t = x.narrow(dim, k, (length - 1) * stride + 1)
    return t if stride == 1 else t[(slice(None),) * dim + (slice(None, None, stride),)]


def blur(x: torch.Tensor, pad: int, gain: float = 1.0, stride: int = 1) -> torch.Tensor:
    """The [1, 3, 3, 1] low-pass filter (outer product, normalised to sum ``gain``) on
    each channel, after zero padding, with an optional stride of 2.

    Two implementations of the same filter, by device: CUDA tensors take separable
    shifted adds (elementwise work at memory speed), since cuDNN runs the depthwise
    (grouped) convolution as a slow direct kernel; CPUs keep the depthwise convolution,
    which oneDNN runs faster than the shifted adds (figures: BENCHMARKS.md, "Why the
    defaults are what they are").
    """
    if x.device.type == "cuda":
        return blur_shifted(x, pad, gain, stride)
    return blur_conv(x, pad, gain, stride)


@functools.lru_cache(maxsize=64)
def _lowpass_2d(gain: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    # built once per (gain, device, dtype): a fresh tensor would be a copy to the device
    f = torch.tensor(_LOWPASS_1D, dtype=torch.float32)
    f2 = torch.outer(f, f)
    return (f2 * (gain / f2.sum())).to(device=device, dtype=dtype)


def blur_conv(x: torch.Tensor, pad: int, gain: float = 1.0, stride: int = 1) -> torch.Tensor:
    """``blur`` as a depthwise convolution: the definition."""
    c = x.shape[1]
    f = _lowpass_2d(gain, x.device, x.dtype).expand(c, 1, 4, 4)
    return F.conv2d(F.pad(x, (pad, pad, pad, pad)), f, stride=stride, groups=c)


def blur_shifted(x: torch.Tensor, pad: int, gain: float = 1.0,
                 stride: int = 1) -> torch.Tensor:
    """``blur`` as separable shifted adds: two passes of 4 taps."""
    x = F.pad(x, (pad, pad, pad, pad))
    scale = math.sqrt(gain) / 8  # per 1-D pass: [1, 3, 3, 1] sums to 8
    for dim in (3, 2):
        length = (x.shape[dim] - 4) // stride + 1
        t0, t1, t2, t3 = (_taps(x, dim, k, length, stride) for k in range(4))
        x = ((t0 + t3) + 3 * (t1 + t2)) * scale
    return x


def upsample2d(x: torch.Tensor) -> torch.Tensor:
    """2x upsampling with the low-pass filter (gain 4): a stride-2 transposed convolution
    with it (zero insertion, then filtering). As for ``blur``: on CPUs oneDNN's depthwise
    convolution (one op each way), on GPUs the polyphase form (``upsample2d_polyphase``)."""
    if x.device.type == "cuda":
        return upsample2d_polyphase(x)
    c = x.shape[1]
    f = _lowpass_2d(4.0, x.device, x.dtype).expand(c, 1, 4, 4)
    return F.conv_transpose2d(x, f, stride=2, padding=1, groups=c)


def upsample2d_polyphase(x: torch.Tensor) -> torch.Tensor:
    """``upsample2d`` in polyphase form: per axis, output 2m = (3 x[m] + x[m-1]) / 4 and
    2m+1 = (3 x[m] + x[m+1]) / 4 (elementwise work at memory speed)."""
    for dim in (3, 2):
        n = x.shape[dim]
        pad = [0, 0, 0, 0]
        pad[2 * (3 - dim):2 * (3 - dim) + 2] = [1, 1]
        xp = F.pad(x, pad)
        left, right = xp.narrow(dim, 0, n), xp.narrow(dim, 2, n)
        even, odd = 0.75 * x + 0.25 * left, 0.75 * x + 0.25 * right
        x = torch.stack([even, odd], dim=dim + 1).flatten(dim, dim + 1)
    return x


def precision_scope(x: torch.Tensor, fp16: bool):
    """The context for a block: under an fp16 autocast, blocks not meant for fp16 run
    with autocast off (their input must then be cast to fp32: see ``as_block_input``)."""
    kind = x.device.type
    if (not fp16 and torch.is_autocast_enabled(kind)
            and torch.get_autocast_dtype(kind) == torch.float16):
        return torch.autocast(kind, enabled=False)
    return contextlib.nullcontext()


def as_block_input(x: torch.Tensor) -> torch.Tensor:
    return x.float() if not torch.is_autocast_enabled(x.device.type) else x


def fp16_from(res: int, num_fp16_res: int) -> int:
    """The lowest resolution that runs in fp16 (above any resolution: none)."""
    return max(res // 2 ** (num_fp16_res - 1), 8) if num_fp16_res > 0 else 2 * res


def normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


# Activations with act(g u) = g act(u) for g > 0: a layer's run-time weight gain can then
# scale the product's output (or ride in bias_act's gain) instead of the whole weight
# tensor, saving an elementwise pass over the weights forward and backward.
_HOMOGENEOUS = ("linear", "relu", "lrelu")


class EqualLinear(nn.Module):
    """Fully connected, equalised learning rate: weight N(0, 1/lr_mul^2) scaled by
    lr_mul / sqrt(in) at run time, bias scaled by lr_mul; the output times ``out_gain``
    (the modulation's own weight gain, folded in)."""

    def __init__(self, in_features: int, out_features: int, act: str = "linear",
                 lr_mul: float = 1.0, bias_init: float = 0.0, out_gain: float = 1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init)))
        self.weight_gain = lr_mul / math.sqrt(in_features) * out_gain
        self.bias_gain = lr_mul * out_gain
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act == "linear":  # one op: b * bias_gain + weight_gain * x W^T
            return torch.addmm(self.bias * self.bias_gain, x, self.weight.t(),
                               alpha=self.weight_gain)
        if self.act in _HOMOGENEOUS:  # act(g xW + b') = g act(xW + b' / g)
            return kernels.bias_act(F.linear(x, self.weight),
                                    self.bias * (self.bias_gain / self.weight_gain), dim=1,
                                    act=self.act, gain=kernels.ACTIVATIONS[self.act].def_gain
                                    * self.weight_gain)
        x = F.linear(x, self.weight * self.weight_gain)
        return kernels.bias_act(x, self.bias * self.bias_gain, dim=1, act=self.act)


class EqualConv2d(nn.Module):
    """Convolution with equalised learning rate, optional low-pass 2x downsampling,
    and a fused bias + activation."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, act: str = "linear",
                 bias: bool = True, down: bool = False, clamp: float | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1 / math.sqrt(in_channels * kernel * kernel)
        self.act, self.down, self.clamp, self.kernel = act, down, clamp, kernel

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        # act(g conv(x, W) + b) = g act(conv(x, W) + b / g): see _HOMOGENEOUS
        folded = self.act in _HOMOGENEOUS
        w = self.weight if folded else self.weight * self.weight_gain
        if self.down:  # filter, then a stride-2 convolution: output exactly half the size
            x = F.conv2d(blur(x, pad=(self.kernel + 1) // 2), w, stride=2)
        else:
            x = F.conv2d(x, w, padding=self.kernel // 2)
        act_gain = kernels.ACTIVATIONS[self.act].def_gain * gain
        clamp = self.clamp * gain if self.clamp is not None else None
        bias = self.bias
        if folded:
            act_gain *= self.weight_gain
            bias = bias * (1 / self.weight_gain) if bias is not None else None
        return kernels.bias_act(x, bias, dim=1, act=self.act, gain=act_gain, clamp=clamp)


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, *,
                     demodulate: bool = True, up: bool = False) -> torch.Tensor:
    """StyleGAN2's modulated convolution: per sample n, the weight W[o, i] * s[n, i],
    demodulated to unit norm per output channel, applied to x[n].

    Computed on the activations: conv(x * s, W) * d, with
    d[n, o] = 1 / sqrt(sum_{i,k} (W[o, i, k] s[n, i])^2 + 1e-8).
    """
    n, _, k = x.shape[0], weight.shape[1], weight.shape[-1]
    x = x * styles.to(x.dtype).reshape(n, -1, 1, 1)
    if up:
        # transposed conv weight layout is [in, out, k, k]: stride 2, then the filter
        x = F.conv_transpose2d(x, weight.transpose(0, 1), stride=2)
        x = blur(x, pad=1, gain=4.0)
    else:
        x = F.conv2d(x, weight, padding=k // 2)
    if demodulate:
        w2 = weight.float().square().sum(dim=(2, 3))                 # [O, I]
        d = (styles.float().square() @ w2.t() + 1e-8).rsqrt()        # [N, O]
        x = x * d.to(x.dtype).reshape(n, -1, 1, 1)
    return x


class SynthesisLayer(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int,
                 up: bool = False, clamp: float | None = None):
        super().__init__()
        # the styles come out scaled by the convolution's weight gain, 1 / sqrt(fan_in)
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0,
                                  out_gain=1 / math.sqrt(in_channels * 9))
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 3, 3))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        # shape [1], not a scalar: DeepSpeed's parameter broadcast cannot view a 0-d tensor
        self.noise_strength = nn.Parameter(torch.zeros([1]))
        self.register_buffer("noise_const", torch.randn(resolution, resolution))
        self.up, self.resolution, self.clamp = up, resolution, clamp

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise: torch.Tensor | None):
        """``noise``: per-pixel noise ([N, 1, R, R], or [R, R] for all samples), or None."""
        x = modulated_conv2d(x, self.weight, self.affine(w), up=self.up)
        if noise is not None:
            x = torch.addcmul(x, noise.to(x.dtype), self.noise_strength.to(x.dtype))
        return kernels.bias_act(x, self.bias, dim=1, act="lrelu", clamp=self.clamp)


class ToRGB(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, w_dim: int,
                 clamp: float | None = None):
        super().__init__()
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0,
                                  out_gain=1 / math.sqrt(in_channels))
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.clamp = clamp

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        x = modulated_conv2d(x, self.weight, self.affine(w), demodulate=False)
        return kernels.bias_act(x, self.bias, dim=1, clamp=self.clamp)


def channels_at(res: int, channel_base: int, channel_max: int) -> int:
    return max(1, min(channel_base // res, channel_max))


def _check_resolution(res: int) -> int:
    levels = int(math.log2(res))
    if 2**levels != res or res < 8 or res > 1024:
        raise ValueError(f"stylegan2 needs a power-of-two resolution from 8 to 1024, got {res}")
    return levels


class MappingNetwork(nn.Module):
    def __init__(self, z_dim: int, w_dim: int, num_ws: int, layers: int = 8,
                 lr_mul: float = 0.01, c_dim: int = 0, w_avg_beta: float = 0.995):
        super().__init__()
        self.z_dim, self.w_dim, self.num_ws, self.c_dim = z_dim, w_dim, num_ws, c_dim
        self.embed = EqualLinear(c_dim, w_dim) if c_dim else None
        dims = [z_dim + (w_dim if c_dim else 0)] + [w_dim] * layers
        self.fcs = nn.ModuleList(EqualLinear(a, b, act="lrelu", lr_mul=lr_mul)
                                 for a, b in zip(dims[:-1], dims[1:]))
        self.w_avg_beta = w_avg_beta
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None,
                truncation_psi: float = 1.0, broadcast: bool = True,
                update_w_avg: bool = True) -> torch.Tensor:
        """w for every synthesis layer: [N, num_ws, w_dim] (a broadcast view), or with
        ``broadcast`` False the one w they share, [N, w_dim]. ``update_w_avg`` False:
        leave the running mean of w alone (style mixing's second latent)."""
        x = normalize_2nd_moment(z.float())
        if self.embed is not None:
            if c is None:
                raise ValueError("this generator is conditional: give labels c")
            x = torch.cat([x, normalize_2nd_moment(self.embed(c.float()))], dim=1)
        for fc in self.fcs:
            x = fc(x)
        if self.training and update_w_avg:  # the running mean of w, for truncation
            with torch.no_grad():
                self.w_avg.copy_(x.detach().float().mean(0).lerp(self.w_avg, self.w_avg_beta))
        if truncation_psi != 1.0:
            x = self.w_avg.to(x.dtype).lerp(x, truncation_psi)
        return x.unsqueeze(1).expand(-1, self.num_ws, -1) if broadcast else x


class SynthesisNetwork(nn.Module):
    def __init__(self, res: int, w_dim: int, channel_base: int, channel_max: int,
                 channels: int = 3, clamp: float | None = None, num_fp16_res: int = 4):
        super().__init__()
        levels = _check_resolution(res)
        self.fp16_res = fp16_from(res, num_fp16_res)
        self.resolutions = [2**i for i in range(2, levels + 1)]
        ch = {r: channels_at(r, channel_base, channel_max) for r in self.resolutions}
        self.const = nn.Parameter(torch.randn(ch[4], 4, 4))
        self.convs = nn.ModuleList()   # per resolution: [conv0 (up), conv1] or [conv1] at 4
        self.torgbs = nn.ModuleList()
        for r in self.resolutions:
            layers = [] if r == 4 else [SynthesisLayer(ch[r // 2], ch[r], w_dim, r, up=True,
                                                       clamp=clamp)]
            layers.append(SynthesisLayer(ch[r], ch[r], w_dim, r, clamp=clamp))
            self.convs.append(nn.ModuleList(layers))
            self.torgbs.append(ToRGB(ch[r], channels, w_dim, clamp=clamp))
        # as NVlabs: each resolution's toRGB shares its w with the next conv
        self.num_ws = sum(len(c) for c in self.convs) + 1

    def forward(self, ws: torch.Tensor, noise_mode: str = "random") -> torch.Tensor:
        """``ws``: a w per layer, [N, num_ws, w_dim], or one for all of them, [N, w_dim]
        (no per-layer copies to differentiate). ``noise_mode``: random, const or none."""
        n = ws.shape[0]
        x = self.const.to(ws.dtype).unsqueeze(0).expand(n, -1, -1, -1)
        layers = [conv for convs in self.convs for conv in convs]
        if noise_mode == "random":  # one draw for every layer's noise
            sizes = [layer.resolution ** 2 for layer in layers]
            draw = torch.randn(n, sum(sizes), device=ws.device, dtype=ws.dtype)
            noise = [part.view(n, 1, layer.resolution, layer.resolution)
                     for part, layer in zip(draw.split(sizes, dim=1), layers)]
        elif noise_mode == "const":
            noise = [layer.noise_const for layer in layers]
        else:
            noise = [None] * len(layers)
        img = None
        i = 0
        for r, convs, torgb in zip(self.resolutions, self.convs, self.torgbs):
            with precision_scope(x, r >= self.fp16_res):
                x, w = as_block_input(x), as_block_input(ws)
                for conv in convs:
                    x = conv(x, w[:, i] if w.ndim == 3 else w, noise[i])
                    i += 1
                y = torgb(x, w[:, i] if w.ndim == 3 else w).float()
            img = y if img is None else upsample2d(img) + y
        return img


def mixing_cutoff(prob: float, num_ws: int, device: torch.device) -> torch.Tensor:
    """Style mixing's crossover layer for one batch, a device scalar: uniform in
    [1, num_ws) with probability ``prob``, else num_ws (no layer mixed)."""
    cutoff = torch.randint(1, num_ws, (), device=device)
    return torch.where(torch.rand((), device=device) < prob, cutoff, num_ws)


def mix_styles(w: torch.Tensor, w2: torch.Tensor, cutoff: torch.Tensor,
               num_ws: int) -> torch.Tensor:
    """[N, num_ws, w_dim]: ``w`` ([N, w_dim]) for the layers before ``cutoff``, ``w2``
    from it on; a mask over the layers, so a device ``cutoff`` is never read."""
    layer = torch.arange(num_ws, device=w.device).view(1, num_ws, 1)
    return torch.where(layer >= cutoff, w2.unsqueeze(1), w.unsqueeze(1))


class StyleGAN2Generator(nn.Module):
    def __init__(self, res: int = 256, z_dim: int = 512, w_dim: int = 512,
                 channel_base: int = 16384, channel_max: int = 512, mapping_layers: int = 8,
                 c_dim: int = 0, channels: int = 3, clamp: float | None = 256.0,
                 num_fp16_res: int = 4, style_mixing: float = 0.0):
        super().__init__()
        self.z_dim, self.c_dim = z_dim, c_dim
        # the probability of style mixing per batch while training (0: never); a
        # training setting, set by whoever trains G, not saved with its weights
        self.style_mixing = style_mixing
        self.synthesis = SynthesisNetwork(res, w_dim, channel_base, channel_max, channels,
                                          clamp, num_fp16_res)
        self.mapping = MappingNetwork(z_dim, w_dim, self.synthesis.num_ws, mapping_layers,
                                      c_dim=c_dim)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None,
                truncation_psi: float = 1.0, noise_mode: str = "random") -> torch.Tensor:
        return self.synthesis(self.ws(z, c, truncation_psi), noise_mode)

    def ws(self, z: torch.Tensor, c: torch.Tensor | None = None, truncation_psi: float = 1.0,
           *, per_layer: bool = False) -> torch.Tensor:
        """What the synthesis takes: the w of ``z`` for every layer, as one [N, w_dim]
        (or, with ``per_layer``, [N, num_ws, w_dim]); while training with style mixing,
        [N, num_ws, w_dim] with the layers from a random crossover on mapped from a
        second latent, with the same labels (the running mean of w follows ``z`` alone)."""
        num_ws = self.synthesis.num_ws
        w = self.mapping(z, c, truncation_psi, broadcast=False)
        if self.training and self.style_mixing > 0:
            w2 = self.mapping(torch.randn_like(z), c, truncation_psi, broadcast=False,
                              update_w_avg=False)
            return mix_styles(w, w2, mixing_cutoff(self.style_mixing, num_ws, z.device),
                              num_ws)
        return w.unsqueeze(1).expand(-1, num_ws, -1) if per_layer else w


def minibatch_std(x: torch.Tensor, group_size: int = 4, num_channels: int = 1) -> torch.Tensor:
    """Append the standard deviation of each feature over groups of samples (averaged
    over features and pixels) as ``num_channels`` more channels: D sees how varied a
    group is, which counters mode collapse. The group is the largest divisor of the
    batch up to ``group_size``, so that any (micro-)batch size works."""
    n, c, h, w = x.shape
    g = max(d for d in range(1, min(group_size, n) + 1) if n % d == 0)
    f = num_channels
    y = x.float().reshape(g, -1, f, c // f, h, w)
    y = (y - y.mean(dim=0)).square().mean(dim=0)
    y = (y + 1e-8).sqrt().mean(dim=(2, 3, 4))          # [n / g, f]
    y = y.reshape(-1, f, 1, 1).repeat(g, 1, h, w).to(x.dtype)
    return torch.cat([x, y], dim=1)


class DBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, clamp: float | None = None,
                 fp16: bool = False):
        super().__init__()
        self.fp16 = fp16
        self.conv0 = EqualConv2d(in_channels, in_channels, 3, act="lrelu", clamp=clamp)
        self.conv1 = EqualConv2d(in_channels, out_channels, 3, act="lrelu", down=True,
                                 clamp=clamp)
        self.skip = EqualConv2d(in_channels, out_channels, 1, bias=False, down=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = math.sqrt(0.5)
        with precision_scope(x, self.fp16):
            x = as_block_input(x)
            return self.skip(x, gain=g) + self.conv1(self.conv0(x), gain=g)


class StyleGAN2Discriminator(nn.Module):
    def __init__(self, res: int = 256, channel_base: int = 16384, channel_max: int = 512,
                 c_dim: int = 0, channels: int = 3, mbstd_group: int = 4,
                 clamp: float | None = 256.0, num_fp16_res: int = 4):
        super().__init__()
        levels = _check_resolution(res)
        self.fp16_res = fp16_from(res, num_fp16_res)
        ch = {2**i: channels_at(2**i, channel_base, channel_max) for i in range(2, levels + 1)}
        self.fromrgb = EqualConv2d(channels, ch[res], 1, act="lrelu", clamp=clamp)
        self.blocks = nn.Sequential(*(DBlock(ch[r], ch[r // 2], clamp, r >= self.fp16_res)
                                      for r in (2**i for i in range(levels, 2, -1))))
        c4 = ch[4]
        self.mbstd_group = mbstd_group
        self.conv = EqualConv2d(c4 + 1, c4, 3, act="lrelu", clamp=clamp)
        self.fc = EqualLinear(c4 * 16, c4, act="lrelu")
        self.c_dim = c_dim
        self.cmap_dim = c4 if c_dim else 0
        self.out = EqualLinear(c4, self.cmap_dim or 1)
        # the projection discriminator's label embedding (as StyleGAN2-ADA's mapping of c)
        self.embed = EqualLinear(c_dim, self.cmap_dim) if c_dim else None

    def forward(self, img: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        with precision_scope(img, img.shape[-1] >= self.fp16_res):
            x = self.fromrgb(as_block_input(img))
        x = self.blocks(x)
        with precision_scope(x, 4 >= self.fp16_res):  # the 4x4 epilogue
            x = as_block_input(x)
            x = self.conv(minibatch_std(x, self.mbstd_group))
            x = self.out(self.fc(x.flatten(1)))
        if self.embed is not None:
            if c is None:
                raise ValueError("this discriminator is conditional: give labels c")
            cmap = normalize_2nd_moment(self.embed(c.float()))
            x = (x * cmap.to(x.dtype)).sum(dim=1, keepdim=True) / math.sqrt(self.cmap_dim)
        return x  # [N, 1] logits
