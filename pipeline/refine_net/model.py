"""The learned refiner's network and inference: crops chosen by the coarse map, the small
U-Net, and :class:`LearnedRefiner` (the ``learned`` refiner of :mod:`pipeline.refine`).
See :mod:`pipeline.refine_net` for the method; :mod:`.data` makes its training samples and
:mod:`.training` trains and calibrates it."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

ASSET_DIR = Path(__file__).resolve().parents[2] / "assets" / "refine_net"
CROP = 96
MARGIN = 0.25
MEAN = np.array([0.485, 0.456, 0.406], np.float32)  # ImageNet statistics: the usual photo normalisation
STD = np.array([0.229, 0.224, 0.225], np.float32)


# -- crops ------------------------------------------------------------------------------------
def crop_box(heat: np.ndarray, margin: float = MARGIN) -> tuple[float, float, float]:
    """(centre x, centre y, side) in pixels of the square crop a (H, W) [0, 1] map selects:
    the box of ``heat >= 0.5`` (or of ``heat >= max/2`` when nothing reaches 0.5), grown by
    ``margin`` of its longer side on each side (at least 4 px)."""
    fg = heat >= 0.5
    if not fg.any():
        fg = heat >= 0.5 * float(heat.max())
    ys, xs = np.nonzero(fg)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    side = max(x1 - x0, y1 - y0) * (1 + 2 * margin) + 8
    return (x0 + x1) / 2, (y0 + y1) / 2, float(side)


def crop_matrix(cx: float, cy: float, side: float, size: int = CROP) -> np.ndarray:
    """2x3 affine map from photo pixels to crop pixels (for cv2.warpAffine)."""
    s = size / side
    return np.array([[s, 0, size / 2 - s * cx], [0, s, size / 2 - s * cy]], np.float32)


def net_input(image: np.ndarray, heat: np.ndarray, M: np.ndarray, size: int = CROP) -> np.ndarray:
    """(5, size, size) float32: normalised RGB, coarse map, inside-the-photo flag, cropped by M."""
    interp = cv2.INTER_AREA if M[0, 0] < 1 else cv2.INTER_LINEAR
    rgb = cv2.warpAffine(image, M, (size, size), flags=interp, borderMode=cv2.BORDER_REFLECT)
    h = cv2.warpAffine(heat.astype(np.float32), M, (size, size), flags=cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    inside = cv2.warpAffine(np.ones(heat.shape, np.float32), M, (size, size), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    rgb = (rgb.astype(np.float32) / 255.0 - MEAN) / STD
    return np.concatenate([rgb.transpose(2, 0, 1), h[None], inside[None]]).astype(np.float32)


# -- the network ------------------------------------------------------------------------------
def build_net():
    import torch
    from torch import nn

    def block(cin, cout, stride=1, dilation=1):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, dilation, dilation, bias=False),
                             nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

    class RefineNet(nn.Module):
        """Small U-Net working at half the crop's resolution (48 -> 24 -> 12 and back), with a
        full-resolution head that sees the RGB crop and the coarse map again, so edges are
        placed at full crop resolution; input (B, 5, S, S), output logits (B, 1, S, S)."""

        def __init__(self):
            super().__init__()
            self.stem = block(5, 24, 2)
            self.d1 = nn.Sequential(block(24, 32, 2), block(32, 32))
            self.d2 = nn.Sequential(block(32, 48, 2), block(48, 48, dilation=2), block(48, 48, dilation=4))
            self.u1 = block(48 + 32, 32)
            self.u0 = block(32 + 24, 16)
            self.full = block(16 + 5, 8)
            self.head = nn.Conv2d(8 + 1, 1, 3, padding=1)

        def forward(self, x):
            up = lambda t, ref: nn.functional.interpolate(t, size=ref.shape[-2:], mode="bilinear", align_corners=False)
            s0 = self.stem(x)
            s1 = self.d1(s0)
            y = self.d2(s1)
            y = self.u1(torch.cat([up(y, s1), s1], 1))
            y = self.u0(torch.cat([up(y, s0), s0], 1))
            y = self.full(torch.cat([up(y, x), x], 1))
            # the coarse map itself reaches the last layer: keeping a good mask is an easy path
            return self.head(torch.cat([y, x[:, 3:4] * 2 - 1], 1))

    return RefineNet()


# -- the refiner ------------------------------------------------------------------------------
class LearnedRefiner:
    """``refiner(image HWC uint8, heat (H, W) float [0, 1]) -> RefineResult`` with the small CNN.

    ``weights``: a folder with ``model.safetensors`` (default ``assets/refine_net``)."""

    name = "learned"
    takes_points = False
    needs_self_attention = False
    stateful = False

    def __init__(self, weights: str | Path = ASSET_DIR):
        import torch
        from safetensors.torch import load_file

        from ..refine import RefinerUnavailable

        path = Path(weights) / "model.safetensors" if Path(weights).is_dir() else Path(weights)
        if not path.exists():
            raise RefinerUnavailable(f"no learned refiner weights at {path}; train them with "
                                     "`python -m pipeline.refine_net train --out assets/refine_net`")
        self.net = build_net()
        try:
            self.net.load_state_dict(load_file(str(path)))
        except RuntimeError as e:
            raise RefinerUnavailable(f"{path} does not hold this refiner's weights ({e}); retrain it") from e
        self.net.eval()
        self._torch = torch
        cfg = path.parent / "config.json"
        # the share of the network in the final map (see ``calibrate``); 1: the network alone
        self.blend = float(json.loads(cfg.read_text()).get("blend", 1.0)) if cfg.exists() else 1.0

    def logits(self, image: np.ndarray, heat: np.ndarray) -> np.ndarray:
        """(H, W) float32 object logits over the whole photo (very negative outside the crop)."""
        torch = self._torch
        M = crop_matrix(*crop_box(heat))
        x = torch.from_numpy(net_input(image, heat, M))[None]
        with torch.inference_mode():
            y = self.net(x)[0, 0].numpy()
        h, w = heat.shape
        return cv2.warpAffine(y, M, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=-20.0)

    def probability(self, image: np.ndarray, heat: np.ndarray, blend: float | None = None) -> np.ndarray:
        """(H, W) float32 in [0, 1]: ``blend`` x the network's probability + (1 - ``blend``) x the
        coarse map (``blend`` None: the calibrated value of the weights' config.json)."""
        w = self.blend if blend is None else blend
        p = 1.0 / (1.0 + np.exp(-np.clip(self.logits(image, heat), -30, 30)))
        return w * p + (1 - w) * heat if w < 1 else p

    def __call__(self, image, heat, attention=None, points=None, labels=None):
        from ..refine import RefinementError, RefineResult, check_inputs, point_refiners

        heat = check_inputs(image, heat)
        if points is not None and len(points):
            raise RefinementError("the learned refiner does not take clicks; use one that does: "
                                  + ", ".join(point_refiners()))
        mask = self.probability(image, heat) > 0.5
        info = {} if mask.any() else {"warning": "the learned refiner found no object in the crop"}
        return RefineResult(mask, self.name, info)
