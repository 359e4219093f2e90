"""Pictures of heat maps and masks for people (PNG files, the studio). HWC uint8 RGB out."""
from __future__ import annotations

import cv2
import numpy as np


def heat_to_rgb(heat: np.ndarray) -> np.ndarray:
    """(H, W) float in [0, 1] -> (H, W, 3) uint8, the 'jet' colour map (blue cold, red hot)."""
    u8 = (np.clip(np.nan_to_num(heat), 0, 1) * 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(u8, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)


def overlay_heat(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend the coloured heat map ((H, W) float in [0, 1]) over an HWC uint8 image of the same
    H, W; ImageError when the sizes differ (resize the map with attention.upsample first)."""
    from .images import ImageError, require_rgb

    require_rgb(image)
    if np.shape(heat) != image.shape[:2]:
        raise ImageError(f"heat map is {np.shape(heat)}, the image is {image.shape[:2]}: they must be the same size")
    return cv2.addWeighted(image, 1 - alpha, heat_to_rgb(heat), alpha, 0)


def mask_view(image: np.ndarray, mask: np.ndarray, overlay: bool = True) -> np.ndarray:
    """(H, W, 3) uint8 at the image's own size: ``mask`` (H, W) bool over the HWC uint8 image,
    or (``overlay`` False) the mask alone, white on black, so a panel of the mask shows it."""
    return overlay_mask(image, mask) if overlay else np.repeat(mask[..., None] * np.uint8(255), 3, axis=2)


def overlay_mask(image: np.ndarray, mask: np.ndarray, colour=(0, 255, 80), alpha: float = 0.45,
                 outline: bool = True) -> np.ndarray:
    """Tint the mask's pixels and draw its outline on an HWC uint8 image."""
    out = image.copy()
    m = mask.astype(bool)
    out[m] = (out[m] * (1 - alpha) + np.array(colour) * alpha).astype(np.uint8)
    if outline and m.any():
        # a dark line under the coloured one: visible on any object colour (a green outline
        # alone vanishes on a cyan kite)
        contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, (0, 0, 0), 2)
        cv2.drawContours(out, contours, -1, tuple(int(c) for c in colour), 1)
    return out


# Distinct, saturated colours for instances (Kelly's / Tableau-like), readable on photos.
INSTANCE_COLOURS = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
                    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)]


def overlay_instances(image: np.ndarray, masks: list[np.ndarray], alpha: float = 0.45) -> np.ndarray:
    """Each instance mask tinted in its own colour with a dark-and-light outline (visible on
    any background), later masks on top; HWC uint8."""
    out = image.copy()
    for k, m in enumerate(masks):
        m = np.asarray(m, bool)
        colour = np.array(INSTANCE_COLOURS[k % len(INSTANCE_COLOURS)])
        out[m] = (out[m] * (1 - alpha) + colour * alpha).astype(np.uint8)
    for k, m in enumerate(masks):
        if np.asarray(m).any():
            contours, _ = cv2.findContours(np.asarray(m, np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(out, contours, -1, (0, 0, 0), 2)
            cv2.drawContours(out, contours, -1, (255, 255, 255), 1)
    return out


def fit_within(image: np.ndarray, max_side: int) -> np.ndarray:
    """Shrink (area interpolation) so the longer side is at most ``max_side``; never enlarges."""
    h, w = image.shape[:2]
    k = max_side / max(h, w)
    if k >= 1:
        return image
    return cv2.resize(image, (max(1, round(w * k)), max(1, round(h * k))), interpolation=cv2.INTER_AREA)


def mask_to_png(mask: np.ndarray) -> np.ndarray:
    """bool mask -> (H, W) uint8 0/255."""
    return mask.astype(np.uint8) * 255


def display_scale(hw: tuple[int, int], min_side: int = 320) -> int:
    """The integer factor :func:`upscale_for_display` enlarges an (H, W) image by."""
    return max(1, int(np.ceil(min_side / max(1, min(hw[0], hw[1])))))


def upscale_for_display(image: np.ndarray, min_side: int = 320) -> np.ndarray:
    """Nearest-neighbour enlargement of small images (the embedded model draws 64x64)."""
    h, w = image.shape[:2]
    k = display_scale((h, w), min_side)
    if k <= 1:
        return image
    return cv2.resize(image, (w * k, h * k), interpolation=cv2.INTER_NEAREST)


def iou_curve_image(thresholds, ious, chosen: float | None = None, current: float | None = None,
                    size: tuple[int, int] = (420, 280), rule: str | None = None) -> np.ndarray:
    """A line chart of IoU (with the refined mask) vs threshold, HWC uint8, with a legend:
    the curve in blue, the chosen threshold in green (labelled with the ``rule`` that chose
    it, a threshold selector's name), the slider's in orange."""
    w, h = size
    img = np.full((h, w, 3), 255, np.uint8)
    left, right, top, bottom = 46, w - 14, 34, h - 40
    cv2.rectangle(img, (left, top), (right, bottom), (200, 200, 200), 1)

    def px(t, v):
        return int(left + t * (right - left)), int(bottom - v * (bottom - top))

    for v in (0.25, 0.5, 0.75):
        cv2.line(img, px(0, v), px(1, v), (235, 235, 235), 1)
    pts = np.array([px(float(t), float(v)) for t, v in zip(thresholds, ious)], np.int32)
    blue, green, orange = (40, 80, 200), (30, 150, 60), (235, 130, 0)
    if len(pts) > 1:
        cv2.polylines(img, [pts], False, blue, 2, cv2.LINE_AA)
    for t, colour in ((chosen, green), (current, orange)):
        if t is not None:
            cv2.line(img, px(t, 0), px(t, 1), colour, 2)
    font, grey = cv2.FONT_HERSHEY_SIMPLEX, (70, 70, 70)
    for v in (0, 0.5, 1):
        cv2.putText(img, f"{v:.1f}", (8, px(0, v)[1] + 5), font, 0.45, grey, 1, cv2.LINE_AA)
        cv2.putText(img, f"{v:.1f}", (px(v, 0)[0] - 10, bottom + 18), font, 0.45, grey, 1, cv2.LINE_AA)
    cv2.putText(img, "threshold", (w // 2 - 34, h - 6), font, 0.5, grey, 1, cv2.LINE_AA)
    cv2.putText(img, "IoU", (6, top - 8), font, 0.5, grey, 1, cv2.LINE_AA)
    x = left + 4
    chosen_label = "refiner's choice" if rule in (None, "paper") else f"chosen by {rule}"
    for label, colour in (("IoU", blue), (chosen_label, green), ("your threshold", orange)):
        cv2.line(img, (x, 14), (x + 18, 14), colour, 3)
        cv2.putText(img, label, (x + 22, 19), font, 0.45, (40, 40, 40), 1, cv2.LINE_AA)
        x += 30 + cv2.getTextSize(label, font, 0.45, 1)[0][0]
    return img


def draw_clicks(image: np.ndarray, clicks, min_side: int = 320) -> np.ndarray:
    """The image enlarged for display (upscale_for_display) with each click ((x, y, label) in
    image pixels) as a dot: green for an object (1), red for background (0)."""
    import cv2

    shown = upscale_for_display(image, min_side)
    k = display_scale(image.shape[:2], min_side)
    for x, y, label in clicks:
        centre = (int((x + 0.5) * k), int((y + 0.5) * k))
        cv2.circle(shown, centre, max(4, int(k * 1.5)), (40, 220, 60) if label else (235, 40, 40), -1)
        cv2.circle(shown, centre, max(4, int(k * 1.5)), (255, 255, 255), 1)
    return shown


def damaged_tile(size: int = 128) -> np.ndarray:
    """A grey tile crossed in red (HWC uint8): the gallery's picture for a sample that cannot be read."""
    tile = np.full((size, size, 3), 70, np.uint8)
    cv2.line(tile, (0, 0), (size - 1, size - 1), (200, 60, 60), 3)
    cv2.line(tile, (size - 1, 0), (0, size - 1), (200, 60, 60), 3)
    return tile
