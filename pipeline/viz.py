"""Pictures of heat maps and masks for people (PNG files, the studio). HWC uint8 RGB out."""
from __future__ import annotations

import cv2
import numpy as np


def heat_to_rgb(heat: np.ndarray) -> np.ndarray:
    """(H, W) float in [0, 1] -> (H, W, 3) uint8, the 'jet' colour map (blue cold, red hot)."""
    u8 = (np.clip(np.nan_to_num(heat), 0, 1) * 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(u8, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)


def overlay_heat(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend the coloured heat map over an HWC uint8 image."""
    return cv2.addWeighted(image, 1 - alpha, heat_to_rgb(heat), alpha, 0)


def overlay_mask(image: np.ndarray, mask: np.ndarray, colour=(0, 255, 80), alpha: float = 0.45,
                 outline: bool = True) -> np.ndarray:
    """Tint the mask's pixels and draw its outline on an HWC uint8 image."""
    out = image.copy()
    m = mask.astype(bool)
    out[m] = (out[m] * (1 - alpha) + np.array(colour) * alpha).astype(np.uint8)
    if outline and m.any():
        contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, tuple(int(c) for c in colour), 1)
    return out


def mask_to_png(mask: np.ndarray) -> np.ndarray:
    """bool mask -> (H, W) uint8 0/255."""
    return mask.astype(np.uint8) * 255
