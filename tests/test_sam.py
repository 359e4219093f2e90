"""The ``sam`` refiner in both weight formats: loading, prompts, cached embedding, errors.

No SAM weights can be downloaded here, so the models are small SAMs with random weights,
built by transformers (saved as a folder) and by segment-anything's own code (saved as a
.pth): these tests check loading, the prompt coordinates, the embedding cache and clicks
against the libraries' own results, not the quality of SAM's masks."""
import cv2
import numpy as np
import pytest
import torch

from conftest import coco_image
from pipeline.refine import RefinerUnavailable, get_refiner, refine_and_choose, sam_prompts
from pipeline.sam import HFSamPredictor, is_hub_id, sam_architecture
from pipeline.testing import save_tiny_sam, save_tiny_segment_anything


@pytest.fixture(scope="module")
def sam_dir(tmp_path_factory):
    return save_tiny_sam(tmp_path_factory.mktemp("sam-tiny"))


@pytest.fixture(scope="module")
def instance(coco):
    ann = next(a for a in coco.loadAnns(coco.getAnnIds(iscrowd=False)) if a["area"] > 20000)
    img = np.array(coco_image(coco, ann["image_id"]))  # writable, as torch.from_numpy prefers
    gt = coco.annToMask(ann).astype(np.float32)
    heat = cv2.GaussianBlur(gt, (0, 0), 8)
    return img, heat / heat.max()


@pytest.mark.slow
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


@pytest.mark.slow
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
    garbage = tmp_path / "sam_vit_b_01ec64.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(RefinerUnavailable, match="cannot read checkpoint"):
        get_refiner("sam", checkpoint=str(garbage))


@pytest.fixture(scope="module")
def sam_pth(tmp_path_factory):
    return save_tiny_segment_anything(tmp_path_factory.mktemp("sam-pth") / "sam_tiny.pth")


@pytest.mark.slow
def test_segment_anything_checkpoint_runs_through_its_own_predictor(sam_pth, instance):
    """A segment-anything .pth (here a small SAM built by segment-anything's own code) is
    run by segment-anything's SamPredictor; the architecture is read off the file."""
    from segment_anything import SamPredictor
    from segment_anything.build_sam import _build_sam

    from pipeline.checkpoints import read_state_dict

    img, heat = instance
    refiner = get_refiner("sam", checkpoint=str(sam_pth))
    assert isinstance(refiner.predictor, SamPredictor)
    assert sam_architecture(read_state_dict(sam_pth)) == dict(
        encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2, encoder_global_attn_indexes=[1])
    result = refiner(img, heat)
    # the same weights driven directly through segment-anything, with the same prompts
    direct = SamPredictor(_build_sam(encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2,
                                     encoder_global_attn_indexes=[1]).eval())
    direct.model.load_state_dict(torch.load(sam_pth))
    direct.set_image(img)
    box, points, labels = sam_prompts(heat)
    masks, scores, _ = direct.predict(point_coords=points, point_labels=labels, box=box, multimask_output=True)
    assert np.array_equal(result.mask, masks[int(np.argmax(scores))])
    assert result.info["score"] == pytest.approx(float(scores.max()))


@pytest.mark.slow
def test_segment_anything_variants_are_read_off_the_file(sam_pth, tmp_path):
    from segment_anything import sam_model_registry

    from pipeline.sam import SAM_VARIANTS

    # a vit_b-shaped state dict (shapes only matter here) is recognised as vit_b
    shapes = {k: torch.empty(v.shape) for k, v in sam_model_registry["vit_b"]().state_dict().items()}
    assert sam_architecture(shapes) == SAM_VARIANTS["vit_b"]
    with pytest.raises(RefinerUnavailable, match="non-standard SAM .32-wide, 2 blocks., not vit_l"):
        get_refiner("sam", checkpoint=str(sam_pth), model_type="vit_l")
    with pytest.raises(RefinerUnavailable, match="unknown SAM model type"):
        get_refiner("sam", checkpoint=str(sam_pth), model_type="vit_x")
    if not torch.cuda.is_available():
        with pytest.raises(RefinerUnavailable, match="CUDA is not available"):
            get_refiner("sam", checkpoint=str(sam_pth), device="cuda")
    other = tmp_path / "not_sam.pth"
    torch.save({"conv.weight": torch.zeros(3, 3)}, other)
    with pytest.raises(RefinerUnavailable, match="not a segment-anything checkpoint"):
        get_refiner("sam", checkpoint=str(other))
    truncated = tmp_path / "truncated.pth"
    state = torch.load(sam_pth)
    state.pop("mask_decoder.iou_token.weight")
    torch.save(state, truncated)
    with pytest.raises(RefinerUnavailable, match="1 missing .mask_decoder.iou_token.weight"):
        get_refiner("sam", checkpoint=str(truncated))
