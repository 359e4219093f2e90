"""FOPA-compatible placement scorer (ObPlaNet, ResNet-18), for FOPA's published checkpoints.

FOPA ("Fast Object Placement Assessment", Niu et al. 2022) predicts, for one scaled
foreground, a 256x256 map of how plausible it is to centre the object at each pixel. This
module re-implements its ``ObPlaNet_resnet18`` with the same parameter names, so that the
published ``FOPA.pth`` / ``best_weight.pth`` (and the training checkpoints
``{"epoch", "net_state", "opti_state"}``) load key for key (checked exactly, see
:mod:`pipeline.checkpoints`), and wraps it in the interface of :func:`pipeline.placement.heatmap`.

Pre- and post-processing follow libcom's ``FOPAHeatMapModel`` step for step, so heat maps
equal upstream's (tests/test_fopa_upstream.py runs libcom's code beside this one):

1. the foreground image is kept whole (not cropped to its mask) and blacked out where the
   mask is <= 127; 16 scales i/18, scale s meaning "the foreground image's limiting side is
   s x the background's", sizes truncated as libcom's ``prepare_multi_fg_scales`` does;
2. foreground and mask (as RGB) are resized with PIL's bicubic filter and pasted centred on
   black canvases the size of the background, which upstream saves as JPEG (PIL's default
   quality 75) and reads back: that round trip is repeated here in memory;
3. background and foreground canvases go to 256x256 with PIL's (antialiased) bilinear
   filter, the mask (read back as luma) with PIL's nearest; ImageNet normalisation;
4. the heat is the softmax's channel 1 at 256x256; a box centre is valid where the scaled
   foreground stays inside the image (upstream's ``heatmap_center``), and upstream's top
   boxes are the highest valid pixels over all scales, ``x = int(x_ / 256 * W - w / 2)``.

Deliberate differences, documented and tested: boxes are ranked on the float heat maps
(upstream ranks the JPEG-saved 8-bit ones, whose ties fall in ``argsort``'s order) and
the ranked list skips boxes overlapping a better one (IoU >= 0.5) instead of drawing 3 at
random from the top 50; a box is reported for the object (the mask's bounding box inside
the scaled foreground), so :func:`pipeline.compose.paste` of the cut-out object lands
exactly where upstream's ``make_composite_PIL`` puts the whole foreground's pixels.
"""
from __future__ import annotations

import io
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from .checkpoints import load_exact, read_state_dict
from .devices import resolve_device
from .images import check_image
from .placement import PlacementError, PlacementResult

# exactly libcom's i / (1 + 16 + 1): sizes are truncated with int(), so a rounded scale can
# move a size by one pixel
FOPA_SCALES = tuple(i / 18 for i in range(1, 17))
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
    """(w, h) of the whole foreground image at ``scale``, as libcom's prepare_multi_fg_scales
    computes it: the limiting side first, truncated, then the other from the truncated one.
    At least 1 pixel (upstream would fail to resize a 0-pixel side)."""
    (fh, fw), (bh, bw) = fg_hw, bg_hw
    if fh / fw > bh / bw:
        h = int(bh * scale)
        w = int(h / fh * fw)
    else:
        w = int(bw * scale)
        h = int(w / fw * fh)
    return max(1, w), max(1, h)


def _jpeg_round_trip(image: Image.Image) -> Image.Image:
    """What saving as ``.jpg`` with PIL's defaults and reading back does (upstream caches the
    scaled foregrounds and masks as JPEG files; the network was trained on such inputs)."""
    buf = io.BytesIO()
    image.save(buf, format="JPEG")
    buf.seek(0)
    return Image.open(buf)


def _normalise(image: Image.Image) -> torch.Tensor:
    """PIL RGB 256x256 -> (3, 256, 256) float32: torchvision's ToTensor + Normalize, same ops."""
    x = torch.from_numpy(np.asarray(image, np.uint8).copy()).permute(2, 0, 1).float().div(255)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return x.sub(mean).div(std)


def _mask_uint8(fg_mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    from .placement import PlacementError

    m = np.asarray(fg_mask)
    if m.shape != shape:
        raise PlacementError(f"foreground mask {m.shape} does not match its image {shape}")
    if m.dtype == bool:
        m = m.astype(np.uint8) * 255
    elif m.dtype != np.uint8:
        raise PlacementError(f"the foreground mask must be HW bool or uint8 0-255, got {m.dtype}")
    if not (m > 127).any():
        raise PlacementError("the foreground mask is empty: nothing to place")
    return m


def center_valid(scale_wh: tuple[int, int], bg_hw: tuple[int, int], side: int = INPUT_SIDE) -> np.ndarray:
    """(side, side) bool: heat-map pixels where upstream lets a box centre be (its
    ``heatmap_center``: hb = int(h / H * side / 2) rows and wb columns off each border).
    Upstream's ``[hb:-hb]`` is empty when hb is 0; here a 0 margin excludes nothing."""
    (w, h), (bh, bw) = scale_wh, bg_hw
    hb, wb = int(h / bh * side / 2), int(w / bw * side / 2)
    valid = np.zeros((side, side), bool)
    valid[hb:side - hb, wb:side - wb] = True
    return valid


@dataclass
class FopaResult(PlacementResult):
    """PlacementResult plus what upstream computes, for checking and for display.

    ``heat``: (S, 256, 256) float32 softmax maps (libcom's heat maps before their JPEG
    save); ``sizes``: (w, h) of the whole scaled foreground per scale; ``fg_box``: the
    mask's XYXY box in the foreground image."""

    heat: np.ndarray | None = None
    sizes: tuple[tuple[int, int], ...] = ()
    fg_box: tuple[int, int, int, int] | None = None

    def upstream_boxes(self, n: int = 50) -> list[tuple[int, int, int, int, int, float]]:
        """Upstream's top ``n`` boxes as (scale index, x, y, w, h, heat), XYWH of the whole
        scaled foreground: libcom's generate_bounding_box on the float maps (the highest
        valid heat over all scales; equal heats in index order)."""
        return list(itertools.islice(self.ranked_centres(), n))

    def ranked_centres(self):
        """All of :meth:`upstream_boxes`, lazily, best first."""
        bh, bw = self.maps.shape[1:]
        centre = np.stack([np.where(center_valid(s, (bh, bw)), hm, 0.0) for hm, s in zip(self.heat, self.sizes)])
        order = np.argsort(-centre, axis=None, kind="stable")
        for si, y_, x_ in zip(*np.unravel_index(order, centre.shape)):
            w, h = self.sizes[si]
            x = int(x_ / centre.shape[2] * bw - w / 2)
            y = int(y_ / centre.shape[1] * bh - h / 2)
            yield int(si), x, y, w, h, float(centre[si, y_, x_])


class FopaScorer:
    """Placement scores from an ObPlaNet checkpoint: a :class:`pipeline.placement.Scorer`
    (map values and box scores are the network's probabilities, in [0, 1])."""

    name = "fopa"
    needs_checkpoint = True

    def __init__(self, checkpoint: str | Path | None = None, device: str = "cpu", net: ObPlaNet | None = None):
        if net is None:
            if checkpoint is None:
                raise PlacementError("the FOPA scorer needs its checkpoint (libcom's FOPA.pth or FOPA's best_weight.pth)")
            net = load_obplanet(checkpoint, resolve_device(device))
        self.net = net.eval()
        self.device = next(net.parameters()).device

    def inputs(self, background: np.ndarray, fg: np.ndarray, fg_mask: np.ndarray, scale: float):
        """(bg, fg, mask) tensors (3/3/1, 256, 256) for one scale, and the scaled foreground's
        (w, h): libcom's prepare_multi_fg_scales + generate_heatmap, in memory."""

        background, fg = check_image(background), check_image(fg)
        mask = _mask_uint8(fg_mask, fg.shape[:2])
        bg_t, (fg_t, mask_t), size = self._bg_tensor(background), *self._fg_tensors(background.shape[:2], fg, mask, scale)
        return bg_t, fg_t, mask_t, size

    @staticmethod
    def _bg_tensor(background: np.ndarray) -> torch.Tensor:
        return _normalise(Image.fromarray(background).resize((INPUT_SIDE, INPUT_SIDE), Image.BILINEAR))

    @staticmethod
    def _fg_tensors(bg_hw, fg: np.ndarray, mask: np.ndarray, scale: float):
        bh, bw = bg_hw
        filled = Image.fromarray(np.where(mask[..., None] > 127, fg, 0).astype(np.uint8))
        mask_rgb = Image.fromarray(np.repeat(mask[..., None], 3, axis=2))
        w, h = scaled_size(scale, fg.shape[:2], (bh, bw))
        w, h = min(w, bw), min(h, bh)
        top, left = int((bh - h) / 2), int((bw - w) / 2)
        canvas = np.zeros((bh, bw, 3), np.uint8)
        mcanvas = np.zeros((bh, bw, 3), np.uint8)
        canvas[top:top + h, left:left + w] = np.asarray(filled.resize((w, h), Image.BICUBIC))
        mcanvas[top:top + h, left:left + w] = np.asarray(mask_rgb.resize((w, h), Image.BICUBIC))
        fg_img = _jpeg_round_trip(Image.fromarray(canvas)).convert("RGB")
        m_img = _jpeg_round_trip(Image.fromarray(mcanvas)).convert("L")
        fg_t = _normalise(fg_img.resize((INPUT_SIDE, INPUT_SIDE), Image.BILINEAR))
        m = np.asarray(m_img.resize((INPUT_SIDE, INPUT_SIDE), Image.NEAREST), np.uint8)
        mask_t = torch.from_numpy(m.copy()).float().div(255)[None]
        return (fg_t, mask_t), (w, h)

    @torch.no_grad()
    def __call__(self, background: np.ndarray, fg: np.ndarray, fg_mask: np.ndarray, *,
                 scales: Sequence[float] | None = None, existing_masks: Sequence[np.ndarray] = (),
                 fg_class: str | None = None, top_k: int = 5, batch: int | None = None) -> FopaResult:
        """``background`` HWC uint8; ``fg`` HWC uint8 with ``fg_mask`` HW bool (or uint8 0-255,
        e.g. a JPEG mask, used as upstream uses it: > 127 is the object), its own image, kept
        whole: pass a cut-out (:func:`pipeline.compose.cut_out`) for scales of the object itself.

        Returns a :class:`FopaResult`: ``maps`` (S, H, W) float32 in [0, 1] at background size
        (the 256x256 heat resized bilinearly, 0 where upstream excludes a centre), ``heat`` the
        256x256 maps themselves, and ``boxes``: up to ``top_k`` (scale, object XYXY box, heat),
        best first, the first being upstream's top-ranked placement. ``batch``: scales per
        network call (default 1 on a CPU, where larger batches measured slower, 8 on a GPU).
        ``existing_masks`` and ``fg_class`` are not inputs of FOPA's network: ignored (the
        :class:`pipeline.placement.Scorer` signature)."""
        from .compose import fit_box
        from .masks import bbox
        from .placement import _iou

        scales = FOPA_SCALES if scales is None else scales
        background, fg = check_image(background), check_image(fg)
        mask = _mask_uint8(fg_mask, fg.shape[:2])
        scales = tuple(float(s) for s in scales)
        if not scales or min(scales) <= 0 or max(scales) > 1:
            raise PlacementError(f"FOPA scales must be in (0, 1], got {scales}")
        bh, bw = background.shape[:2]
        batch = batch or (1 if self.device.type == "cpu" else 8)
        bg_t = self._bg_tensor(background)
        prepared = [self._fg_tensors((bh, bw), fg, mask, s) for s in scales]
        heat = []
        for i in range(0, len(prepared), batch):
            part = prepared[i:i + batch]
            fgs = torch.stack([p[0][0] for p in part]).to(self.device)
            m = torch.stack([p[0][1] for p in part]).to(self.device)
            bg = bg_t[None].expand(len(part), -1, -1, -1).to(self.device)
            heat.append(torch.softmax(self.net(bg, fgs, m).float(), dim=1)[:, 1].cpu().numpy())
        heat = np.concatenate(heat).astype(np.float32)
        sizes = tuple(p[1] for p in prepared)
        maps = np.stack([
            np.clip(cv2.resize(np.where(v, hm, 0).astype(np.float32), (bw, bh), interpolation=cv2.INTER_LINEAR), 0, 1)
            * cv2.resize(v.astype(np.uint8), (bw, bh), interpolation=cv2.INTER_NEAREST)
            for hm, v in ((hm, center_valid(s, (bh, bw))) for hm, s in zip(heat, sizes))]).astype(np.float32)
        fb = bbox(mask > 127)
        result = FopaResult(scales, maps, [], heat=heat, sizes=sizes, fg_box=fb)
        fh, fw = fg.shape[:2]
        boxes, taken = [], []
        for si, x, y, w, h, score in result.ranked_centres():
            if len(boxes) >= top_k:
                break
            # the object's box inside the scaled foreground (whole image scaled to w x h)
            ob = (x + fb[0] * w / fw, y + fb[1] * h / fh, x + fb[2] * w / fw, y + fb[3] * h / fh)
            try:
                box = fit_box(ob, (bh, bw))
            except ValueError:
                continue  # the object vanishes at this size
            if all(_iou(box, b) < 0.5 for b in taken):
                taken.append(box)
                boxes.append((scales[si], box, score))
        if not boxes:
            raise PlacementError(f"the object does not fit the {bw}x{bh} background at any of the scales {scales}")
        result.boxes = boxes
        return result
