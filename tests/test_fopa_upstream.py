"""pipeline.fopa and pipeline.rainnet against the upstream inference code, with identical
random weights: libcom's FOPAHeatMapModel (prepare_multi_fg_scales -> generate_heatmap ->
generate_bounding_box) and RainNet's test.py (TestDataset -> processImage -> tensor2im),
vendored in tests/upstream_ref/ (Apache-2.0 / MIT, see the NOTICE there).

Targets: heat maps within 1e-6 of upstream's at all 16 scales (the largest difference
measured is 0.0; at 2 scales and 1e-3, rounding the scaled sizes instead of truncating them
passed), composites within 1 level for binary masks. Upstream runs on its own files (it reads
paths and caches JPEGs); this project's code gets the same images as arrays. Upstream's
``fg_scale_num=n`` means the scales i / (n + 2), which are passed to the scorer as such.

Boxes are compared on the float heat maps: upstream ranks the 8-bit JPEG maps it saved,
where many pixels tie at the maximum and its order among them is arbitrary, so the test
re-saves its float maps under the same names before its ranking code runs.
"""
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import SHARED
from pipeline.checkpoints import load_exact
from pipeline.compose import cut_out, paste
from pipeline.fopa import FOPA_SCALES, FopaScorer, ObPlaNet, load_obplanet
from pipeline.rainnet import RainNet, RainNetHarmonizer

up_fopa = pytest.importorskip("upstream_ref.libcom_fopa", reason="the vendored upstream code needs torchvision")
from upstream_ref import rainnet_junleen as up_rain  # noqa: E402

FOPA_DIR = SHARED / "libcom" / "tests" / "fopa_heat_map"
IHARMONY = SHARED / "iHarmony4" / "data"
N_SCALES = 16  # upstream's default fg_scale_num: scales i / 18
HEAT_TOL = 1e-6


def _need(*paths):
    for p in paths:
        if not p.exists():
            pytest.skip(f"{p} not found (the shared data folder is beside the project)")


def _iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


@pytest.fixture(scope="module")
def nets():
    """Upstream's ObPlaNet_resnet18 with random weights (random BN statistics too), and this
    project's ObPlaNet holding the same tensors (loaded by the exact-key loader)."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    upstream = up_fopa.ObPlaNet_resnet18(pretrained=False)
    for m in upstream.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    ours = load_exact(ObPlaNet(), upstream.state_dict(), "FOPA ObPlaNet_resnet18").eval()
    return up_fopa.FOPAHeatMapModel(upstream), FopaScorer(net=ours)


def _run_upstream(model, fg_path, mask_path, bg_path, tmp_path):
    """libcom's __call__, plus its float heat maps and its top-50 boxes (x, y, w, h).

    generate_bounding_box reads the heat maps generate_heatmap saved as JPEG; to compare the
    box arithmetic on equal numbers, the float maps are re-saved under the same names as
    32-bit TIFF (PIL reads by content, np.array keeps the floats)."""
    model.float_heatmaps = []
    cache, heat_dir = tmp_path / "cache", tmp_path / "heat"
    with torch.no_grad():
        model(str(fg_path), str(mask_path), str(bg_path), cache_dir=str(cache), heatmap_dir=str(heat_dir),
              fg_scale_num=N_SCALES, composite_num_choose=1)
    floats = np.stack(model.float_heatmaps)
    names = sorted(heat_dir.iterdir(), key=lambda p: float(p.stem.rsplit("_", 1)[1]))  # by scale
    for path, hm in zip(names, floats):
        Image.fromarray(hm.astype(np.float32), mode="F").save(path, format="TIFF")
    for d in cache.glob(f"{N_SCALES}scales_composite*"):
        shutil.rmtree(d)
    model.generate_bounding_box(str(fg_path), str(mask_path), str(bg_path), str(cache / f"{N_SCALES}scales.csv"),
                                str(cache), str(heat_dir), N_SCALES, 1, 50)
    boxes = {tuple(int(v) for v in p.stem.split("_")[-4:])
             for p in (cache / f"{N_SCALES}scales_composite").glob("*/*.jpg")}
    return floats, boxes


def _check_fopa(nets, fg_path, mask_path, bg_path, fg, fg_mask, bg, tmp_path):
    model, scorer = nets
    up_heat, up_boxes = _run_upstream(model, fg_path, mask_path, bg_path, tmp_path)
    scales = tuple(i / (N_SCALES + 2) for i in range(1, N_SCALES + 1))
    r = scorer(bg, fg, fg_mask, scales=scales, top_k=4)
    assert r.heat.shape == up_heat.shape == (N_SCALES, 256, 256)
    assert np.abs(r.heat - up_heat).max() <= HEAT_TOL
    # upstream's top 50 placements (x, y, w, h of the whole scaled foreground), same arithmetic
    ours = {b[1:5] for b in r.upstream_boxes(50)}
    assert ours == up_boxes
    # the first ranked box is upstream's best, mapped to the object's box inside the foreground
    si, x, y, w, h, best = r.upstream_boxes(1)[0]
    assert r.boxes[0][0] == scales[si] and r.boxes[0][2] == best
    fh, fw = fg.shape[:2]
    H, W = bg.shape[:2]
    x1, y1, x2, y2 = r.fg_box
    expect = (x + x1 * w / fw, y + y1 * h / fh, x + x2 * w / fw, y + y2 * h / fh)
    assert np.abs(np.subtract(r.boxes[0][1], expect)).max() <= 1 + max(0, -x, -y, x + w - W, y + h - H)
    # pasting the cut-out object there covers what upstream's make_composite_PIL covers
    _, up_mask = up_fopa.make_composite_PIL(up_fopa.read_image_pil(str(fg_path)), up_fopa.read_image_pil(str(mask_path)),
                                            up_fopa.read_image_pil(str(bg_path)), [x, y, w, h], return_mask=True)
    crop, crop_mask = cut_out(fg, np.asarray(fg_mask) > (127 if fg_mask.dtype == np.uint8 else 0))
    ours_mask = paste(bg, [], crop, crop_mask, r.boxes[0][1], "object", feather=0).instances[-1][1]
    assert _iou(ours_mask, np.asarray(up_mask)[..., 0] > 127) > 0.9
    scores = [s for _, _, s in r.boxes]
    assert scores == sorted(scores, reverse=True) and len(r.boxes) == 4
    for _, (bx1, by1, bx2, by2), _ in r.boxes:
        assert 0 <= bx1 < bx2 <= W and 0 <= by1 < by2 <= H
    return r


@pytest.mark.slow
def test_fopa_equals_libcom_on_its_test_pair(nets, tmp_path):
    """libcom's own FOPA test pair: a dog with a JPEG (soft-edged) mask, used as upstream uses it."""
    fg_p, m_p, bg_p = FOPA_DIR / "foreground/1674.jpg", FOPA_DIR / "foreground_mask/1674.jpg", FOPA_DIR / "background/1674.jpg"
    _need(fg_p, m_p, bg_p)
    fg = np.asarray(Image.open(fg_p).convert("RGB"))
    mask = np.asarray(Image.open(m_p).convert("L"))  # uint8 0-255, as read by upstream
    bg = np.asarray(Image.open(bg_p).convert("RGB"))
    assert len(np.unique(mask)) > 2  # a soft JPEG mask: the case a bool-only path would miss
    _check_fopa(nets, fg_p, m_p, bg_p, fg, mask, bg, tmp_path)


@pytest.mark.slow
def test_fopa_equals_libcom_for_a_coco_object_on_a_coco128_photo(nets, coco, tmp_path):
    """A COCO instance (cut out with its exact bool mask) on a landscape coco128 photo."""
    bgs = sorted((SHARED / "coco128" / "images").glob("*.jpg"))
    if not bgs:
        pytest.skip("coco128 not found")
    bg_p = next(p for p in bgs if Image.open(p).width > Image.open(p).height)
    ann = max((a for a in coco.loadAnns(coco.getAnnIds(iscrowd=False))), key=lambda a: a["area"])
    from conftest import coco_image

    crop, crop_mask = cut_out(coco_image(coco, ann["image_id"]), coco.annToMask(ann).astype(bool))
    fg_p, m_p = tmp_path / "fg.png", tmp_path / "mask.png"
    Image.fromarray(crop).save(fg_p)
    Image.fromarray(crop_mask.astype(np.uint8) * 255).save(m_p)
    bg = np.asarray(Image.open(bg_p).convert("RGB"))
    r = _check_fopa(nets, fg_p, m_p, bg_p, crop, crop_mask, bg, tmp_path)
    assert r.maps.shape == (N_SCALES, *bg.shape[:2]) and 0 <= r.maps.min() and r.maps.max() <= 1


@pytest.mark.slow
def test_fopa_training_checkpoint_format(tmp_path, nets):
    """FOPA's train.py saves {"epoch", "net_state", "opti_state"}: the network part loads."""
    _, scorer = nets
    net = scorer.net
    opti = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-4)
    torch.save({"epoch": 7, "net_state": net.state_dict(), "opti_state": opti.state_dict()}, tmp_path / "7_full.pth")
    loaded = load_obplanet(tmp_path / "7_full.pth")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), net.state_dict().values()))
    assert len(FOPA_SCALES) == 16 and FOPA_SCALES[0] == 1 / 18  # libcom's i / (1 + 16 + 1), not rounded


@pytest.fixture(scope="module")
def rain_nets():
    torch.manual_seed(1)
    upstream = up_rain.RainNet(3, 3, 64, norm_layer=up_rain.RAIN, use_dropout=True)
    with torch.no_grad():
        for name, p in upstream.named_parameters():
            if "gamma" in name or "beta" in name:
                p.normal_(0, 0.1)  # upstream initialises these at 0; random, so RAIN matters
    upstream.eval()  # dropout off (upstream's test.py leaves it on: its output is random)
    return upstream, RainNetHarmonizer(net=load_exact(RainNet(), upstream.state_dict(), "RainNet"))


def _upstream_rain(net, comp_path, mask_path):
    data = up_rain.TestDataset(foreground_paths=str(comp_path), mask_paths=str(mask_path), load_size=256)
    s = data[0]
    with torch.no_grad():
        pred = net.processImage(s["comp"][None], s["mask"][None], s["real"][None])
    return up_rain.tensor2im(pred[0:1])


@pytest.mark.slow
def test_rainnet_equals_upstream_test_py(rain_nets, tmp_path):
    upstream, ours = rain_nets
    comp_p, mask_p = IHARMONY / "a0002_1_4.jpg", IHARMONY / "a0002_1.png"
    _need(comp_p, mask_p)
    comp = np.asarray(Image.open(comp_p).convert("RGB"))  # 2832x4256: the resize matters
    mask = np.asarray(Image.open(mask_p).convert("L")) > 127
    expected = _upstream_rain(upstream, comp_p, mask_p)
    got = ours.predict(comp, mask)
    assert got.shape == expected.shape == (256, 256, 3)
    diff = np.abs(got.astype(int) - expected)
    assert diff.max() <= 1
    changed = expected != np.asarray(Image.fromarray(comp).resize((256, 256), Image.BILINEAR))
    assert changed.mean() > 0.05  # the network did change the object, so equality means something

    # at 256x256 the full-resolution path gives upstream's image too, background untouched
    small_p, small_m = tmp_path / "c.png", tmp_path / "m.png"
    Image.fromarray(comp).resize((256, 256), Image.BILINEAR).save(small_p)
    Image.fromarray(mask.astype(np.uint8) * 255).resize((256, 256), Image.NEAREST).save(small_m)
    c2 = np.asarray(Image.open(small_p))
    m2 = np.asarray(Image.open(small_m)) > 127
    out = ours(c2, m2)
    assert np.abs(out.astype(int) - _upstream_rain(upstream, small_p, small_m)).max() <= 1
    assert np.array_equal(out[~m2], c2[~m2])
