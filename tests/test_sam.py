"""The ``sam`` refiner on transformers' SamModel: loading, prompts, cached embedding, errors.

No SAM weights can be downloaded here, so the model is a small SAM built from a config with
random weights and saved as a folder: these tests check the plumbing (loading, the prompt
coordinates, the embedding cache, clicks), not the quality of SAM's masks."""
import numpy as np
import pytest
import torch

from conftest import coco_image
from pipeline.refine import RefinerUnavailable, get_refiner, refine_and_choose, sam_prompts
from pipeline.sam import HFSamPredictor, is_hub_id
from pipeline.testing import save_tiny_sam


@pytest.fixture(scope="module")
def sam_dir(tmp_path_factory):
    return save_tiny_sam(tmp_path_factory.mktemp("sam-tiny"))


@pytest.fixture(scope="module")
def instance(coco):
    ann = next(a for a in coco.loadAnns(coco.getAnnIds(iscrowd=False)) if a["area"] > 20000)
    img = coco_image(coco, ann["image_id"])
    gt = coco.annToMask(ann).astype(np.float32)
    import cv2

    heat = cv2.GaussianBlur(gt, (0, 0), 8)
    return img, heat / heat.max()


def test_cached_embedding_predicts_what_the_library_computes_in_one_pass(sam_dir, instance):
    """Our SamPredictor-style split (embedding once, prompts scaled by us) must give exactly
    what transformers computes from the image and the prompts in one go."""
    from transformers import SamModel, SamProcessor

    img, heat = instance
    box, points, labels = sam_prompts(heat)
    model, processor = SamModel.from_pretrained(sam_dir).eval(), SamProcessor.from_pretrained(sam_dir)
    inputs = processor(images=img, input_points=[[points.tolist()]], input_labels=[[labels.tolist()]],
                       input_boxes=[[box.tolist()]], return_tensors="pt")
    with torch.no_grad():
        expected = model(**inputs, multimask_output=True)

    predictor = HFSamPredictor(model, processor)
    predictor.set_image(img)
    np.testing.assert_allclose(predictor.transform_coords(points), inputs["input_points"][0, 0].numpy(), rtol=1e-6)
    masks, scores, logits = predictor.predict(points, labels, box, multimask_output=True)
    np.testing.assert_allclose(logits, expected.pred_masks[0, 0].numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(scores, expected.iou_scores[0, 0].numpy(), rtol=1e-5, atol=1e-6)
    assert masks.shape == (3, *img.shape[:2]) and masks.dtype == bool
    library_masks = processor.post_process_masks(expected.pred_masks, inputs["original_sizes"],
                                                 inputs["reshaped_input_sizes"])[0][0].numpy()
    assert (masks != library_masks).mean() < 1e-3  # equal but for float ties at the 0 logit


def test_sam_refiner_from_a_folder_embeds_each_image_once(sam_dir, instance):
    img, heat = instance
    refiner = get_refiner("sam", checkpoint=str(sam_dir))
    calls = []
    set_image = refiner.predictor.set_image
    refiner.predictor.set_image = lambda image: (calls.append(1), set_image(image))[1]

    first = refiner(img, heat)
    assert first.mask.shape == heat.shape and first.mask.dtype == bool
    assert first.info["box"] == sam_prompts(heat)[0].tolist()
    h, w = heat.shape
    clicked = refiner(img, heat, points=np.array([[w // 2, h // 2]], np.float32), labels=np.array([0]))
    again = refiner(img, heat)
    assert len(calls) == 1  # the clicks and the repeat reused the embedding
    assert np.array_equal(again.mask, first.mask)  # deterministic
    # a background click is one more prompt token: the decoder's output changes
    assert not np.array_equal(clicked.mask, first.mask) or clicked.info["score"] != first.info["score"]
    refiner(img[:, ::-1].copy(), heat[:, ::-1].copy())
    assert len(calls) == 2  # another image: a new embedding
    if first.mask.any():
        choice = refine_and_choose(img, heat, refiner)
        assert choice.refined.shape == heat.shape and 0 <= choice.threshold <= 1


def test_sam_loading_errors_say_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert is_hub_id("facebook/sam-vit-base") and not is_hub_id(str(tmp_path / "x.pth"))
    with pytest.raises(RefinerUnavailable, match="hf download facebook/sam-vit-base"):
        get_refiner("sam", checkpoint="facebook/sam-vit-base")
    with pytest.raises(RefinerUnavailable, match="without config.json"):
        get_refiner("sam", checkpoint=str(tmp_path))
    (tmp_path / "config.json").write_text('{"model_type": "sam"}')
    with pytest.raises(RefinerUnavailable, match="could not load the SAM model"):
        get_refiner("sam", checkpoint=str(tmp_path))
    pth = tmp_path / "sam_vit_b_01ec64.pth"
    pth.write_bytes(b"not a checkpoint")
    import importlib

    try:
        importlib.import_module("segment_anything")
    except Exception:  # not installed, or torchvision broken: the message says how to get SAM anyway
        with pytest.raises(RefinerUnavailable, match="segment-anything torchvision.*transformers' format"):
            get_refiner("sam", checkpoint=str(pth))
    else:
        with pytest.raises(RefinerUnavailable, match="could not load"):
            get_refiner("sam", checkpoint=str(pth))
