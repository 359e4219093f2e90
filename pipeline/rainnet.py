"""RainNet-compatible harmonizer (Ling et al., CVPR 2021), for RainNet's published weights.

RAIN ("region-aware adaptive instance normalisation") normalises the pasted region's
features with the mean/std of the background's features inside the network: the learned
version of what :mod:`pipeline.harmonize` does to pixel statistics. This module
re-implements ``RainNet(input_nc=3, output_nc=3, ngf=64, norm_layer=RAIN)`` with upstream's
parameter names, so ``net_G.pth`` loads key for key (checked exactly), and wraps it as a
harmonizer ``(image HWC uint8, mask HW bool) -> image``.

Pre- and post-processing follow RainNet's ``test.py`` (``TestDataset`` ->
``RainNet.processImage`` -> ``util.tensor2im``), so that :meth:`RainNetHarmonizer.predict`
equals upstream's 256x256 output within one level (tests/test_fopa_upstream.py runs the
upstream code beside this one): the composite goes to 256x256 with PIL's (antialiased)
bilinear filter and to [-1, 1] by torchvision's ToTensor + Normalize(0.5, 0.5); the mask is
a mode "1" image resized with PIL's nearest filter; the output is
``pred * mask + comp * (1 - mask)``. Deliberate differences: the mask is HW bool (upstream's
``convert('1')`` dithers a soft mask: threshold it first); the output is rounded (upstream's
``astype(uint8)`` truncates, at most 1 level lower); the network runs in eval mode (upstream's
test.py never calls ``eval()``, so its dropout layers stay active and its output is random).
At the image's own size (``__call__``), the network's change is upsampled bilinearly and
added to the full-resolution composite inside the mask, so the background keeps every pixel
and a 256x256 input gives :meth:`predict`'s result.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from .checkpoints import load_exact, read_state_dict
from .devices import resolve_device
from .harmonize import HarmonizeError, check_composite

SIDE = 256


class RAIN(nn.Module):
    """Normalise background features by their own statistics and foreground features by
    the foreground's, re-scaled to the background's; separate learned affine per region."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.foreground_gamma = nn.Parameter(torch.zeros(channels))
        self.foreground_beta = nn.Parameter(torch.zeros(channels))
        self.background_gamma = nn.Parameter(torch.zeros(channels))
        self.background_beta = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def _stats(self, x, region):
        n = region.sum(dim=(2, 3), keepdim=True)
        mean = (x * region).sum(dim=(2, 3), keepdim=True) / (n + self.eps)
        var = (((x - mean) * region) ** 2).sum(dim=(2, 3), keepdim=True) / (n + self.eps)
        return mean, torch.sqrt(var + self.eps)

    def forward(self, x, mask):
        mask = F.interpolate(mask, size=x.shape[2:], mode="nearest")
        bg = 1 - mask
        mean_b, std_b = self._stats(x, bg)
        mean_f, std_f = self._stats(x, mask)

        def affine(t, gamma, beta):
            return t * (1 + gamma[None, :, None, None]) + beta[None, :, None, None]

        out_b = affine((x - mean_b) / std_b, self.background_gamma, self.background_beta) * bg
        out_f = affine((x - mean_f) / std_f * std_b + mean_b, self.foreground_gamma, self.foreground_beta) * mask
        return out_f + out_b


def _instance_norm(c: int) -> nn.Module:
    return nn.InstanceNorm2d(c, affine=False, track_running_stats=False)


def _norm(module: nn.Module, x, mask):
    return module(x, mask) if isinstance(module, RAIN) else module(x)


class UnetBlock(nn.Module):
    """Upstream's ``UnetBlockCodec`` (inner blocks only: RainNet never uses the outermost)."""

    def __init__(self, outer: int, inner: int, submodule: "UnetBlock | None" = None, innermost: bool = False,
                 enc_rain: bool = False, dec_rain: bool = True):
        super().__init__()
        self.innermost = innermost
        if innermost:
            self.up = nn.Sequential(nn.LeakyReLU(0.2, True), nn.Conv2d(outer, inner, 4, 2, 1, bias=False),
                                    nn.ReLU(True), nn.ConvTranspose2d(inner, outer, 4, 2, 1, bias=False))
        else:
            self.down = nn.Sequential(nn.LeakyReLU(0.2, True), nn.Conv2d(outer, inner, 4, 2, 1, bias=False))
            self.downnorm = RAIN(inner) if enc_rain else _instance_norm(inner)
            self.submodule = submodule
            self.up = nn.Sequential(nn.ReLU(True), nn.ConvTranspose2d(inner * 2, outer, 4, 2, 1, bias=False))
        self.upnorm = RAIN(outer) if dec_rain else _instance_norm(outer)

    def forward(self, x, mask):
        if self.innermost:
            ret = self.up(x)
        else:
            ret = self.submodule(_norm(self.downnorm, self.down(x), mask), mask)
            ret = self.up(ret)
        return torch.cat([x, _norm(self.upnorm, ret, mask)], 1)


class RainNet(nn.Module):
    """RainNet(input_nc=3, output_nc=3, ngf=64, norm_layer=RAIN, use_attention=True) with the
    default norm_type_indicator (instance norm in the encoder, RAIN in the decoder)."""

    def __init__(self, input_nc: int = 3, output_nc: int = 3, ngf: int = 64):
        super().__init__()
        lrelu, relu = (lambda: nn.LeakyReLU(0.2, True)), (lambda: nn.ReLU(True))
        self.model_layer0 = nn.Conv2d(input_nc, ngf, 4, 2, 1, bias=False)
        self.model_layer1 = nn.Sequential(lrelu(), nn.Conv2d(ngf, ngf * 2, 4, 2, 1, bias=False))
        self.model_layer1norm = _instance_norm(ngf * 2)
        self.model_layer2 = nn.Sequential(lrelu(), nn.Conv2d(ngf * 2, ngf * 4, 4, 2, 1, bias=False))
        self.model_layer2norm = _instance_norm(ngf * 4)
        self.model_layer3 = nn.Sequential(lrelu(), nn.Conv2d(ngf * 4, ngf * 8, 4, 2, 1, bias=False))
        self.model_layer3norm = _instance_norm(ngf * 8)
        block = UnetBlock(ngf * 8, ngf * 8, innermost=True)
        for _ in range(3):
            block = UnetBlock(ngf * 8, ngf * 8, submodule=block)
        self.unet_block = block
        self.model_layer11 = nn.Sequential(relu(), nn.ConvTranspose2d(ngf * 16, ngf * 4, 4, 2, 1, bias=False))
        self.model_layer11norm = RAIN(ngf * 4)
        self.model_layer11att = nn.Sequential(nn.Conv2d(ngf * 8, ngf * 8, 1), nn.Sigmoid())
        self.model_layer12 = nn.Sequential(relu(), nn.ConvTranspose2d(ngf * 8, ngf * 2, 4, 2, 1, bias=False))
        self.model_layer12norm = RAIN(ngf * 2)
        self.model_layer12att = nn.Sequential(nn.Conv2d(ngf * 4, ngf * 4, 1), nn.Sigmoid())
        self.model_layer13 = nn.Sequential(relu(), nn.ConvTranspose2d(ngf * 4, ngf, 4, 2, 1, bias=False))
        self.model_layer13norm = RAIN(ngf)
        self.model_layer13att = nn.Sequential(nn.Conv2d(ngf * 2, ngf * 2, 1), nn.Sigmoid())
        self.model_out = nn.Sequential(relu(), nn.ConvTranspose2d(ngf * 2, output_nc, 4, 2, 1), nn.Tanh())

    def forward(self, x, mask):
        """x: (B, 3, 256, 256) composite in [-1, 1]; mask: (B, 1, 256, 256) in {0, 1}."""
        x0 = self.model_layer0(x)
        x1 = self.model_layer1norm(self.model_layer1(x0))
        x2 = self.model_layer2norm(self.model_layer2(x1))
        x3 = self.model_layer3norm(self.model_layer3(x2))
        y = self.unet_block(x3, mask)
        y = torch.cat([x2, self.model_layer11norm(self.model_layer11(y), mask)], 1)
        y = self.model_layer11att(y) * y
        y = torch.cat([x1, self.model_layer12norm(self.model_layer12(y), mask)], 1)
        y = self.model_layer12att(y) * y
        y = torch.cat([x0, self.model_layer13norm(self.model_layer13(y), mask)], 1)
        y = self.model_layer13att(y) * y
        return self.model_out(y)


def load_rainnet(checkpoint: str | Path, device: str = "cpu") -> RainNet:
    """A RainNet with the given weights; CheckpointError when the file does not fit exactly."""
    return load_exact(RainNet(), read_state_dict(checkpoint), "RainNet").to(device).eval()


def _to_unit(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> (3, h, w) in [-1, 1]: torchvision's ToTensor + Normalize(0.5, 0.5), same ops."""
    x = torch.from_numpy(np.asarray(image, np.uint8).copy()).permute(2, 0, 1).float().div(255)
    return x.sub(0.5).div(0.5)


class RainNetHarmonizer:
    """``(image HWC uint8, mask HW bool) -> image`` with a RainNet checkpoint: a
    :class:`pipeline.harmonize.Harmonizer`."""

    name = "rainnet"
    needs_checkpoint = True

    def __init__(self, checkpoint: str | Path | None = None, device: str = "cpu", net: RainNet | None = None):
        if net is None:
            if checkpoint is None:
                raise HarmonizeError("the rainnet harmonizer needs a checkpoint (RainNet's net_G.pth)")
            net = load_rainnet(checkpoint, resolve_device(device))
        self.net = net.eval()
        self.device = next(net.parameters()).device

    @torch.no_grad()
    def _run(self, image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(comp, harmonized) at 256x256 in [-1, 1], each (3, 256, 256), as upstream's test.py."""
        comp = _to_unit(Image.fromarray(image).resize((SIDE, SIDE), Image.BILINEAR))
        m = Image.fromarray(mask.astype(np.uint8) * 255).convert("1").resize((SIDE, SIDE), Image.NEAREST)
        mt = torch.from_numpy(np.asarray(m, bool).astype(np.float32))[None, None].to(self.device)
        x = comp[None].to(self.device)
        pred = self.net(x, mt)
        return comp, (pred * mt + x * (1 - mt))[0].float().cpu()

    def predict(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Upstream's result: the harmonized composite at 256x256, HWC uint8 (rounded)."""
        image, mask = check_composite(image, mask)
        _, out = self._run(image, mask)
        return ((out.permute(1, 2, 0).numpy() + 1) / 2 * 255).round().clip(0, 255).astype(np.uint8)

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The harmonized composite at the image's size (HWC uint8); pixels outside ``mask``
        are returned unchanged."""
        image, mask = check_composite(image, mask)
        h, w = image.shape[:2]
        comp, out = self._run(image, mask)
        # the network's change, upsampled, added to the full-resolution composite inside the mask
        delta = ((out - comp).permute(1, 2, 0).numpy() * 127.5).astype(np.float32)
        if (h, w) != (SIDE, SIDE):
            delta = cv2.resize(delta, (w, h), interpolation=cv2.INTER_LINEAR)
        result = image.astype(np.float32) + delta * mask[..., None]
        return np.clip(result, 0, 255).round().astype(np.uint8)
