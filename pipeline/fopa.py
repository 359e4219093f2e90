"""FOPA-compatible placement scorer (ObPlaNet, ResNet-18), for FOPA's published checkpoints.

FOPA ("Fast Object Placement Assessment", Niu et al. 2022) predicts, for one scaled
foreground, a 256x256 map of how plausible it is to centre the object at each pixel. This
module re-implements its ``ObPlaNet_resnet18`` with the same parameter names, so that the
upstream ``*_state_final.pth`` loads key for key (checked exactly, see
:mod:`pipeline.checkpoints`), and wraps it in the interface of :func:`pipeline.placement.heatmap`.

Inputs as upstream: background and foreground at 256x256, ImageNet-normalised; the scaled
foreground pasted centred on a black canvas the size of the background, with its mask
(0/1) beside it; the heat is the softmax's channel 1; 16 scales i/18, i = 1..16, scale s
meaning "the object's limiting side is s x the background's".
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpoints import load_exact, read_state_dict
from .compose import cut_out
from .devices import resolve_device
from .images import check_image
from .placement import PlacementError, PlacementResult, rank_boxes

FOPA_SCALES = tuple(round(i / 18, 4) for i in range(1, 17))
INPUT_SIDE = 256
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# -- ResNet-18 pieces (torchvision's layout and names, written here: no torchvision needed) --
class BasicBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


def resnet_layer(inplanes: int, planes: int, stride: int) -> nn.Sequential:
    return nn.Sequential(BasicBlock(inplanes, planes, stride), BasicBlock(planes, planes))


class BasicConv2d(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.basicconv = nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True))

    def forward(self, x):
        return self.basicconv(x)


class DynamicFilter(nn.Module):
    """FOPA's ``simpleDFN``: a depthwise kernel generated from the foreground features is
    convolved over the background features, then fused to ``out_c`` channels."""

    def __init__(self, in_x: int, in_y: int, out_c: int, kernel_size: int = 3):
        super().__init__()
        self.kernel_size = kernel_size
        self.fuse = nn.Conv2d(in_x, out_c, 3, 1, 1)
        self.gernerate_kernel = nn.Sequential(nn.Conv2d(in_y, in_x, 1))  # (sic): upstream's parameter name
        self.pool = nn.AdaptiveAvgPool2d(kernel_size)

    def forward(self, x, y):
        b, c, h, w = x.shape
        kernel = self.gernerate_kernel(self.pool(y)).reshape(b * c, 1, self.kernel_size, self.kernel_size)
        out = F.conv2d(x.reshape(1, b * c, h, w), kernel, padding=self.kernel_size // 2, groups=b * c)
        return self.fuse(out.reshape(b, c, h, w))


def _up_add(x, y):
    return y + F.interpolate(x, size=y.shape[2:], mode="bilinear", align_corners=False)


class ObPlaNet(nn.Module):
    """ObPlaNet_resnet18 with upstream's module names (bg_encoder*, fg_encoder*, selfdc_*, ...)."""

    def __init__(self):
        super().__init__()
        # background: a 4-channel ResNet-18 (image + an all-zero mask channel)
        self.bg_encoder1 = nn.Sequential(nn.Conv2d(4, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(True))
        self.bg_encoder2 = nn.Sequential(nn.MaxPool2d(3, 2, 1), resnet_layer(64, 64, 1))
        self.bg_encoder4 = resnet_layer(64, 128, 2)
        self.bg_encoder8 = resnet_layer(128, 256, 2)
        self.bg_encoder16 = resnet_layer(256, 512, 2)
        # foreground: the same with its mask as 4th channel, split one stage finer
        self.fg_encoder1 = nn.Sequential(nn.Conv2d(4, 64, 7, 2, 3, bias=False))
        self.fg_encoder2 = nn.Sequential(nn.BatchNorm2d(64), nn.ReLU(True))
        self.fg_encoder4 = nn.Sequential(nn.MaxPool2d(3, 2, 1), resnet_layer(64, 64, 1))
        self.fg_encoder8 = resnet_layer(64, 128, 2)
        self.fg_encoder16 = resnet_layer(128, 256, 2)
        self.fg_encoder32 = resnet_layer(256, 512, 2)
        self.mask_conv = nn.Conv2d(1, 64, 7, 2, 3, bias=False)  # in upstream's checkpoints, unused in forward
        self.fg_trans16 = nn.Conv2d(512, 64, 1)
        self.fg_trans8 = nn.Conv2d(256, 64, 1)
        self.selfdc_16 = DynamicFilter(64, 64, 512)
        self.selfdc_8 = DynamicFilter(64, 64, 512)
        self.upconv16 = BasicConv2d(512, 256)
        self.upconv8 = BasicConv2d(256, 128)
        self.upconv4 = BasicConv2d(128, 64)
        self.upconv2 = BasicConv2d(64, 64)
        self.upconv1 = BasicConv2d(64, 64)
        self.classifier = nn.Conv2d(512, 2, 1)

    def forward(self, bg, fg, mask):
        """bg, fg: (B, 3, 256, 256) ImageNet-normalised; mask: (B, 1, 256, 256) in {0, 1}.
        Returns logits (B, 2, 256, 256)."""
        b1 = self.bg_encoder1(torch.cat([bg, torch.zeros_like(mask)], 1))
        b2 = self.bg_encoder2(b1)
        b4 = self.bg_encoder4(b2)
        b8 = self.bg_encoder8(b4)
        b16 = self.bg_encoder16(b8)
        f = self.fg_encoder2(self.fg_encoder1(torch.cat([fg, mask], 1)))
        f16 = self.fg_encoder16(self.fg_encoder8(self.fg_encoder4(f)))
        f32 = self.fg_encoder32(f16)
        aux8, aux16 = self.fg_trans8(f16), self.fg_trans16(f32)
        d8 = _up_add(self.upconv16(b16), b8)
        d4 = _up_add(self.upconv8(d8), b4)
        d2 = _up_add(self.upconv4(d4), b2)
        d1 = _up_add(self.upconv2(d2), b1)
        full = self.upconv1(F.interpolate(d1, scale_factor=2, mode="bilinear", align_corners=True))
        fused = _up_add(self.selfdc_16(d1, aux8), self.selfdc_8(full, aux16))
        return self.classifier(fused)


def load_obplanet(checkpoint: str | Path, device: str = "cpu") -> ObPlaNet:
    """An ObPlaNet with FOPA's weights; CheckpointError when the file does not fit exactly."""
    net = load_exact(ObPlaNet(), read_state_dict(checkpoint), "FOPA ObPlaNet_resnet18")
    return net.to(device).eval()


def scaled_size(scale: float, fg_hw: tuple[int, int], bg_hw: tuple[int, int]) -> tuple[int, int]:
    """(w, h) of the foreground at ``scale``, as FOPA's prepare_multi_fg_scales.py computes it."""
    (fh, fw), (bh, bw) = fg_hw, bg_hw
    if fh / fw > bh / bw:
        h = bh * scale
        w = h / fh * fw
    else:
        w = bw * scale
        h = w / fw * fh
    return max(1, int(w)), max(1, int(h))


def _normalise(image: np.ndarray) -> torch.Tensor:
    x = cv2.resize(image, (INPUT_SIDE, INPUT_SIDE), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255.0
    x = (x - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    return torch.from_numpy(x).permute(2, 0, 1)


class FopaScorer:
    """Placement scores from an ObPlaNet checkpoint: a :class:`pipeline.placement.Scorer`
    (map values and box scores are the network's probabilities, in [0, 1])."""

    name = "fopa"

    def __init__(self, checkpoint: str | Path | None = None, device: str = "cpu", net: ObPlaNet | None = None):
        if net is None:
            if checkpoint is None:
                raise PlacementError("the FOPA scorer needs its checkpoint (FOPA's *_state_final.pth)")
            net = load_obplanet(checkpoint, resolve_device(device))
        self.net = net.eval()
        self.device = next(net.parameters()).device

    def inputs(self, background: np.ndarray, fg: np.ndarray, fg_mask: np.ndarray, scale: float):
        """(bg, fg, mask) tensors for one scale, laid out as FOPA's data pipeline does."""
        crop, crop_mask = cut_out(fg, fg_mask)
        bh, bw = background.shape[:2]
        w, h = scaled_size(scale, crop.shape[:2], (bh, bw))
        w, h = min(w, bw), min(h, bh)
        canvas = np.zeros_like(background)
        mask = np.zeros((bh, bw), np.float32)
        top, left = (bh - h) // 2, (bw - w) // 2
        canvas[top:top + h, left:left + w] = cv2.resize(crop, (w, h), interpolation=cv2.INTER_LINEAR)
        mask[top:top + h, left:left + w] = cv2.resize(crop_mask.astype(np.float32), (w, h)) >= 0.5
        m = cv2.resize(mask, (INPUT_SIDE, INPUT_SIDE), interpolation=cv2.INTER_NEAREST)
        return _normalise(background), _normalise(canvas), torch.from_numpy(m)[None], (w, h)

    @torch.no_grad()
    def __call__(self, background: np.ndarray, fg: np.ndarray, fg_mask: np.ndarray, *,
                 scales: Sequence[float] | None = None, existing_masks: Sequence[np.ndarray] = (),
                 fg_class: str | None = None, top_k: int = 5, batch: int = 4):
        """``background`` HWC uint8, ``fg`` HWC uint8 with ``fg_mask`` HW bool (its own image).
        Returns a PlacementResult: per-scale maps at background size in [0, 1] (0 where the
        box would leave the image, as upstream excludes the border) and ranked boxes.
        ``existing_masks`` and ``fg_class`` are not inputs of FOPA's network: ignored."""
        scales = FOPA_SCALES if scales is None else tuple(scales)
        background, fg = check_image(background), check_image(fg)
        fg_mask = np.asarray(fg_mask)
        if fg_mask.shape != fg.shape[:2]:
            raise PlacementError(f"foreground mask {fg_mask.shape} does not match its image {fg.shape[:2]}")
        if not fg_mask.any():
            raise PlacementError("the foreground mask is empty: nothing to place")
        bh, bw = background.shape[:2]
        prepared = [self.inputs(background, fg, fg_mask, s) for s in scales]
        maps, sizes = [], []
        for i in range(0, len(prepared), batch):
            part = prepared[i:i + batch]
            bg = torch.stack([p[0] for p in part]).to(self.device)
            fgs = torch.stack([p[1] for p in part]).to(self.device)
            m = torch.stack([p[2] for p in part]).to(self.device)
            heat = torch.softmax(self.net(bg, fgs, m).float(), dim=1)[:, 1].cpu().numpy()
            for hmap, p in zip(heat, part):
                full = cv2.resize(hmap, (bw, bh), interpolation=cv2.INTER_LINEAR)
                w, h = p[3]
                valid = np.zeros_like(full)
                valid[h // 2: bh - (h - h // 2) + 1, w // 2: bw - (w - w // 2) + 1] = 1
                maps.append(np.clip(full * valid, 0, 1).astype(np.float32))
                sizes.append((w, h))
        maps = np.stack(maps)
        return PlacementResult(tuple(scales), maps, rank_boxes(maps, tuple(scales), sizes, (bh, bw), top_k))
