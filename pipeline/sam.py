"""Loading SAM for the ``sam`` refiner, from either of its two published forms.

- a segment-anything checkpoint file (``sam_vit_b_01ec64.pth`` and its vit_l/vit_h
  siblings): run by the ``segment_anything`` package's own ``SamPredictor``, with the
  architecture read off the file's tensor shapes; that package needs torchvision;
- the same weights in transformers' format (the hub's ``facebook/sam-vit-base``/-large/
  -huge, or a local folder with its ``config.json``): run by transformers' ``SamModel``
  behind :class:`HFSamPredictor`, which needs nothing beyond transformers.

Both give an object with SamPredictor's interface: ``set_image`` once per image (the
expensive image encoder), then many cheap ``predict`` calls (prompt encoder + mask decoder).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .devices import is_hub_id
from .errors import PipelineError


class SamUnavailable(PipelineError, RuntimeError):
    """SAM cannot be loaded from what was given (missing file, package, offline hub)."""


class HFSamPredictor:
    """SamPredictor's interface over transformers' ``SamModel`` and ``SamProcessor``.

    ``set_image(image)``: image HWC uint8 RGB; runs the ViT image encoder once and keeps
    the embedding. ``predict(point_coords, point_labels, box, multimask_output)``: points
    (K, 2) XY and box XYXY in image pixels, labels (K,) 1 object / 0 background; returns
    SamPredictor's ``(masks (M, H, W) bool, scores (M,) float, low_res_logits (M, 256, 256))``
    with M = 3 when ``multimask_output`` else 1.
    """

    def __init__(self, model, processor, device: str = "cpu"):
        self.model = model.to(device).eval()
        self.processor = processor
        self.device = device
        self.embedding = None
        self.original_size = None  # (H, W) of the image given to set_image
        self.input_size = None  # (h, w) after the processor's longest-side resize (1024 for SAM)

    def set_image(self, image: np.ndarray) -> None:
        # a copy: images read with np.asarray(PIL image) are read-only, which torch warns about
        inputs = self.processor(images=np.array(image), return_tensors="pt")
        with torch.no_grad():
            pixels = inputs["pixel_values"].to(self.device, self.model.dtype)
            self.embedding = self.model.get_image_embeddings(pixels)
        self.original_size = tuple(int(v) for v in inputs["original_sizes"][0])
        self.input_size = tuple(int(v) for v in inputs["reshaped_input_sizes"][0])

    def transform_coords(self, xy: np.ndarray) -> np.ndarray:
        """Image pixels -> the resized frame the model sees (what SamProcessor does to prompts)."""
        (oh, ow), (nh, nw) = self.original_size, self.input_size
        return np.asarray(xy, np.float64) * np.array([nw / ow, nh / oh])

    def predict(self, point_coords=None, point_labels=None, box=None, multimask_output: bool = True):
        if self.embedding is None:
            raise RuntimeError("call set_image(image) before predict()")
        kwargs = {}
        if point_coords is not None and len(point_coords):
            pts = self.transform_coords(np.asarray(point_coords).reshape(-1, 2))
            kwargs["input_points"] = torch.tensor(pts, dtype=torch.float32).reshape(1, 1, -1, 2)
            kwargs["input_labels"] = torch.tensor(np.asarray(point_labels), dtype=torch.long).reshape(1, 1, -1)
        if box is not None:
            corners = self.transform_coords(np.asarray(box).reshape(2, 2)).reshape(-1)
            kwargs["input_boxes"] = torch.tensor(corners, dtype=torch.float32).reshape(1, 1, 4)
        with torch.no_grad():
            out = self.model(image_embeddings=self.embedding,
                             multimask_output=multimask_output, **{k: v.to(self.device) for k, v in kwargs.items()})
        logits = out.pred_masks[0, 0].float().cpu()  # (M, 256, 256)
        masks = self.processor.post_process_masks(
            out.pred_masks.float().cpu(), [self.original_size], [self.input_size])[0][0]  # (M, H, W) bool
        return masks.numpy().astype(bool), out.iou_scores[0, 0].float().cpu().numpy(), logits.numpy()


# segment-anything's three published image encoders (its build_sam.py)
SAM_VARIANTS = {
    "vit_b": dict(encoder_embed_dim=768, encoder_depth=12, encoder_num_heads=12,
                  encoder_global_attn_indexes=[2, 5, 8, 11]),
    "vit_l": dict(encoder_embed_dim=1024, encoder_depth=24, encoder_num_heads=16,
                  encoder_global_attn_indexes=[5, 11, 17, 23]),
    "vit_h": dict(encoder_embed_dim=1280, encoder_depth=32, encoder_num_heads=16,
                  encoder_global_attn_indexes=[7, 15, 23, 31]),
}
_EMBEDDING_SIDE = 64  # 1024 px input / 16 px patches: a global-attention block's rel-pos table is 2*64-1 long


def sam_architecture(state_dict: dict[str, torch.Tensor]) -> dict:
    """segment-anything's ``_build_sam`` arguments, read off a checkpoint's tensor shapes:
    width from the patch embedding, depth from the block count, heads from the relative-
    position tables (one row per head dimension), global-attention blocks from the tables
    that span the whole 64x64 embedding instead of a 14x14 window."""
    try:
        width = int(state_dict["image_encoder.patch_embed.proj.weight"].shape[0])
        blocks = sorted({int(k.split(".")[2]) for k in state_dict if k.startswith("image_encoder.blocks.")})
        tables = [state_dict[f"image_encoder.blocks.{i}.attn.rel_pos_h"] for i in blocks]
        head_dim = int(tables[0].shape[1])
    except (KeyError, ValueError, IndexError) as e:
        raise SamUnavailable(f"not a segment-anything checkpoint (no image encoder of SAM's shape: "
                             f"{type(e).__name__} {e})") from e
    return dict(encoder_embed_dim=width, encoder_depth=len(blocks), encoder_num_heads=width // head_dim,
                encoder_global_attn_indexes=[i for i, t in zip(blocks, tables) if t.shape[0] == 2 * _EMBEDDING_SIDE - 1])


def load_sam_predictor(checkpoint: str, model_type: str | None = None, device: str = "cpu"):
    """A SamPredictor-like object from a segment-anything checkpoint file, a transformers SAM
    folder or a hub id. ``model_type`` (vit_b/vit_l/vit_h) is read off the file when not
    given, and checked against it when given. Raises :class:`SamUnavailable` saying what to do."""
    path = Path(checkpoint).expanduser()
    if path.is_file():
        return _segment_anything_predictor(path, model_type, device)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise SamUnavailable(f"{path} is a folder without config.json: pass a segment-anything .pth file "
                                 "or a transformers SAM folder (as saved by SamModel.save_pretrained)")
        return _transformers_predictor(str(path), device)
    if is_hub_id(checkpoint):
        return _transformers_predictor(checkpoint, device)
    raise SamUnavailable(f"SAM checkpoint {path} does not exist")


def _segment_anything_predictor(path: Path, model_type: str | None, device: str):
    from .checkpoints import CheckpointError, load_exact, read_state_dict

    try:
        from segment_anything import SamPredictor
        from segment_anything.build_sam import _build_sam
    except Exception as e:  # ImportError, or torchvision failing to import beside this torch
        raise SamUnavailable(
            f"{path.name} is a segment-anything checkpoint, which needs `pip install segment-anything torchvision` "
            f"({type(e).__name__}: {e}); or use the same weights in transformers' format "
            "(facebook/sam-vit-base, saved to a local folder), which need no torchvision") from e
    try:
        state = read_state_dict(path)
    except CheckpointError as e:
        raise SamUnavailable(str(e)) from e
    arch = sam_architecture(state)
    found = next((name for name, a in SAM_VARIANTS.items() if a == arch), None)
    if model_type is not None:
        if model_type not in SAM_VARIANTS:
            raise SamUnavailable(f"unknown SAM model type {model_type!r}; one of {sorted(SAM_VARIANTS)}")
        if found != model_type:
            raise SamUnavailable(f"{path.name} holds a {found or 'non-standard'} SAM "
                                 f"({arch['encoder_embed_dim']}-wide, {arch['encoder_depth']} blocks), not "
                                 f"{model_type}: leave the model type unset to use what the file holds")
    try:
        sam = load_exact(_build_sam(**arch), state, f"segment-anything {found or 'SAM'}")
    except CheckpointError as e:
        raise SamUnavailable(str(e)) from e
    return SamPredictor(sam.to(device).eval())


def _transformers_predictor(source: str, device: str):
    from transformers import SamModel, SamProcessor

    try:
        model = SamModel.from_pretrained(source)
        processor = SamProcessor.from_pretrained(source)
    except OSError as e:
        where = ("the hub is not reachable from here (HF_HUB_OFFLINE) or it is not cached: download it where it is "
                 f"(`hf download {source} --local-dir DIR`) and pass DIR" if is_hub_id(source)
                 else "the folder lacks the model or processor files of SamModel/SamProcessor.save_pretrained")
        raise SamUnavailable(f"could not load the SAM model {source!r}: {where} ({e})") from e
    return HFSamPredictor(model, processor, device)
