"""Feature extractors for FID/KID and for the diversity signal of the health monitor.

An extractor maps a batch of uint8 images ``N x 3 x H x W`` (what real data decodes
to, and what generated images become once quantised, as NVlabs and torch-fidelity
evaluate them) to float32 features ``N x dim``. Built in:

* ``inception``: the 2048-d pool features of the Inception-v3 that FID is defined on
  (the TensorFlow graph of 2015-12-05, ported to PyTorch by pytorch-fid as
  ``pt_inception-2015-12-05-6726825d.pth``, the file torch-fidelity also uses). The
  weights are never downloaded at run time: ``--inception PATH`` or
  ``$FASTGAN_INCEPTION`` names the file. Images are resized to 299x299 (bilinear) and
  scaled to [-1, 1] as pytorch-fid does. FID values from it are comparable with
  published ones (those of pytorch-fid exactly; NVlabs' resize differs slightly).
* ``randconv``: a small convolutional network with fixed random weights (seeded, the
  same on every machine), 512-d. It needs no file and is quick on a CPU: the health
  monitor's diversity signal uses it, and ``fastgan eval --features randconv`` gives a
  self-contained FID for comparing runs with each other. Its values are on another
  scale than Inception FIDs and are reported under other names (``fid_randconv``).
* ``module:function``: any callable returning an object with ``name``, ``dim`` and
  ``__call__(images) -> features`` (plug in CLIP, DINOv2, a domain network...).
"""

from __future__ import annotations

import hashlib
import importlib
import os
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError

INCEPTION_ENV = "FASTGAN_INCEPTION"
INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                 + INCEPTION_FILE)
INCEPTION_SHA256_PREFIX = "6726825d"  # torch.hub's convention: the file name holds it


class FeatureExtractor(Protocol):
    name: str
    dim: int

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


# ------------------------------------------------------------------- Inception-v3

class _Conv(nn.Module):
    """Convolution without bias, BatchNorm (eps 1e-3, TensorFlow's), ReLU: named
    ``conv`` and ``bn`` so that the published state dict loads as it is."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg3(x):  # the TF graph's average pools leave the padding out of the mean
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class _BlockA(nn.Module):  # 35x35
    def __init__(self, cin: int, pool: int):
        super().__init__()
        self.branch1x1 = _Conv(cin, 64, 1)
        self.branch5x5_1 = _Conv(cin, 48, 1)
        self.branch5x5_2 = _Conv(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _Conv(cin, 64, 1)
        self.branch3x3dbl_2 = _Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _Conv(96, 96, 3, padding=1)
        self.branch_pool = _Conv(cin, pool, 1)

    def forward(self, x):
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_avg3(x))], 1)


class _BlockB(nn.Module):  # 35x35 -> 17x17
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = _Conv(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = _Conv(cin, 64, 1)
        self.branch3x3dbl_2 = _Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _Conv(96, 96, 3, stride=2)

    def forward(self, x):
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, 3, stride=2)], 1)


class _BlockC(nn.Module):  # 17x17, factorised 7x7 convolutions
    def __init__(self, cin: int, c7: int):
        super().__init__()
        self.branch1x1 = _Conv(cin, 192, 1)
        self.branch7x7_1 = _Conv(cin, c7, 1)
        self.branch7x7_2 = _Conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = _Conv(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = _Conv(cin, c7, 1)
        self.branch7x7dbl_2 = _Conv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = _Conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = _Conv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = _Conv(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = _Conv(cin, 192, 1)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for k in range(1, 6):
            d = getattr(self, f"branch7x7dbl_{k}")(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg3(x))], 1)


class _BlockD(nn.Module):  # 17x17 -> 8x8
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = _Conv(cin, 192, 1)
        self.branch3x3_2 = _Conv(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _Conv(cin, 192, 1)
        self.branch7x7x3_2 = _Conv(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _Conv(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _Conv(192, 192, 3, stride=2)

    def forward(self, x):
        b7 = x
        for k in range(1, 5):
            b7 = getattr(self, f"branch7x7x3_{k}")(b7)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7,
                          F.max_pool2d(x, 3, stride=2)], 1)


class _BlockE(nn.Module):  # 8x8; the last one pools with a max, as the TF graph does
    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = _Conv(cin, 320, 1)
        self.branch3x3_1 = _Conv(cin, 384, 1)
        self.branch3x3_2a = _Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _Conv(cin, 448, 1)
        self.branch3x3dbl_2 = _Conv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _Conv(cin, 192, 1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pool = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg3(x)
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(b3), self.branch3x3_2b(b3),
            self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d),
            self.branch_pool(pool)], 1)


class FIDInception(nn.Module):
    """Inception-v3 up to its 2048-d pool features, with the FID graph's quirks (the
    pools above); module names follow the published state dict."""

    name = "inception"
    dim = 2048

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = _Conv(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _Conv(32, 32, 3)
        self.Conv2d_2b_3x3 = _Conv(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _Conv(64, 80, 1)
        self.Conv2d_4a_3x3 = _Conv(80, 192, 3)
        self.Mixed_5b = _BlockA(192, 32)
        self.Mixed_5c = _BlockA(256, 64)
        self.Mixed_5d = _BlockA(288, 64)
        self.Mixed_6a = _BlockB(288)
        self.Mixed_6b = _BlockC(768, 128)
        self.Mixed_6c = _BlockC(768, 160)
        self.Mixed_6d = _BlockC(768, 160)
        self.Mixed_6e = _BlockC(768, 192)
        self.Mixed_7a = _BlockD(768)
        self.Mixed_7b = _BlockE(1280, max_pool=False)
        self.Mixed_7c = _BlockE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)  # the logits; in the file, unused for FID

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.fc.weight.dtype) / 255
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = x * 2 - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, stride=2)
        for block in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{block}")(x)
        return x.mean(dim=(2, 3)).float()


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def inception_path(flag: str | None) -> str:
    """The weights file: --inception, else $FASTGAN_INCEPTION; a one-line error that
    says where to get it when neither names a file."""
    path = flag or os.environ.get(INCEPTION_ENV)
    how = (f"download {INCEPTION_URL} (the weights pytorch-fid and torch-fidelity use) "
           f"and pass --inception PATH or set {INCEPTION_ENV}=PATH; or use --features "
           "randconv for a self-contained FID (not comparable with published FIDs)")
    if not path:
        raise UserError(f"--inception: FID/KID on Inception features need its weights: {how}")
    if not os.path.isfile(path):
        raise UserError(f"--inception: no such file: {path} ({how})")
    return path


def load_inception(path: str, device) -> FIDInception:
    from ..train.checkpoint import safe_load  # fastgan's one weights_only loader

    net = FIDInception()
    state = safe_load(path, "--inception: not a readable weights file")
    if not isinstance(state, dict):
        raise UserError(f"--inception: {path} is not a state dict (NVlabs' .pkl pickles "
                        f"code, which fastgan never loads): use {INCEPTION_FILE}")
    missing, unexpected = net.load_state_dict(state, strict=False) if _fits(net, state) \
        else (None, None)
    if missing is None or [k for k in missing if not k.endswith("num_batches_tracked")] \
            or [k for k in unexpected if not k.startswith("AuxLogits.")]:
        raise UserError(f"--inception: {path} does not hold the FID Inception-v3 weights "
                        f"(expected {INCEPTION_FILE})")
    digest = _sha256(path)
    net.sha256 = digest
    if not digest.startswith(INCEPTION_SHA256_PREFIX):
        import logging

        logging.getLogger("fastgan").warning(
            "--inception: %s has the right shapes but is not the published %s (its sha256 "
            "starts %s, not %s): its FIDs are not comparable with published ones", path,
            INCEPTION_FILE, digest[:8], INCEPTION_SHA256_PREFIX)
    return net.to(device).eval()


def _fits(net: nn.Module, state: dict) -> bool:
    own = net.state_dict()
    return all(k not in own or getattr(v, "shape", None) == own[k].shape
               for k, v in state.items())


# ------------------------------------------------------------------- random conv

class RandConv(nn.Module):
    """Four stride-2 convolutions with fixed random (seeded) weights on images resized to
    64x64; the features are the global means of the last three layers (128 + 128 + 256
    = 512), so they describe colour and layout at several scales."""

    name = "randconv"
    dim = 512
    VERSION = 1  # bump if the weights or layout change: cached statistics depend on it

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(20261126)
        chans = (3, 64, 128, 128, 256)
        self.convs = nn.ModuleList()
        for cin, cout in zip(chans, chans[1:]):
            # skip_init: no default initialisation, which would draw from the global
            # generator that training's noise and augmentations draw from
            conv = nn.utils.skip_init(nn.Conv2d, cin, cout, 4, stride=2, padding=1)
            with torch.no_grad():  # He-scaled, from our own generator: machine-independent
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g)
                                  * (2 / (cin * 16)) ** 0.5)
                conv.bias.zero_()
            self.convs.append(conv)
        self.requires_grad_(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 127.5 - 1
        x = F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False,
                          antialias=True)
        pooled = []
        for i, conv in enumerate(self.convs):
            x = F.leaky_relu(conv(x), 0.2)
            if i >= 1:
                pooled.append(x.mean(dim=(2, 3)))
        return torch.cat(pooled, 1).float()


def build(spec: str, *, device, inception: str | None = None) -> FeatureExtractor:
    """``inception``, ``randconv`` or ``module:function``."""
    if spec == "inception":
        return load_inception(inception_path(inception), device)
    if spec == "randconv":
        return RandConv().to(device).eval()
    if ":" in spec:
        module, _, attr = spec.partition(":")
        try:
            factory = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise UserError(f"--features: cannot import {spec}: {e}") from None
        ext = factory()
        for need in ("name", "dim"):
            if not hasattr(ext, need):
                raise UserError(f"--features: {spec}() returned an object without .{need}")
        return ext
    raise UserError(f"--features: expected inception, randconv or module:function, got "
                    f"{spec!r}")


def identity(ext: FeatureExtractor) -> str:
    """What cached statistics depend on: the extractor and, for Inception, its file."""
    if isinstance(ext, FIDInception):
        return f"inception-{getattr(ext, 'sha256', 'unknown')[:16]}"
    if isinstance(ext, RandConv):
        return f"randconv-v{RandConv.VERSION}"
    return f"{ext.name}-{getattr(ext, 'version', 0)}"
