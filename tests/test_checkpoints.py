"""FOPA (ObPlaNet) and RainNet loaders: upstream key layout, exact key checks, and the
wrappers run with random weights on the libcom / iHarmony4 samples."""
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import SHARED
from pipeline.checkpoints import CheckpointError, read_state_dict
from pipeline.fopa import FOPA_SCALES, FopaScorer, ObPlaNet, load_obplanet, scaled_size
from pipeline.harmonize import get_harmonizer
from pipeline.placement import get_scorer
from pipeline.rainnet import RAIN, RainNet, RainNetHarmonizer, load_rainnet

FOPA_DIR = SHARED / "libcom" / "tests" / "fopa_heat_map"
IHARMONY = SHARED / "iHarmony4" / "data"


def _rgb(path):
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def obplanet():
    torch.manual_seed(0)
    net = ObPlaNet().eval()
    for m in net.modules():  # random BN statistics too, so a load that skipped them would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return net


@pytest.fixture(scope="module")
def rainnet():
    torch.manual_seed(1)
    net = RainNet().eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "gamma" in name or "beta" in name:
                p.normal_(0, 0.1)  # upstream initialises these at 0; random, so loading is visible
    return net


def test_obplanet_has_upstream_names_and_shapes(obplanet):
    sd = obplanet.state_dict()
    expected = {  # from FOPA's network/ObPlaNet_simple.py and backbone/ResNet.py
        "bg_encoder1.0.weight": (64, 4, 7, 7), "bg_encoder2.1.0.conv1.weight": (64, 64, 3, 3),
        "bg_encoder16.0.downsample.0.weight": (512, 256, 1, 1), "fg_encoder1.0.weight": (64, 4, 7, 7),
        "fg_encoder2.0.running_var": (64,), "fg_encoder4.1.1.bn2.weight": (64,),
        "fg_encoder32.1.conv2.weight": (512, 512, 3, 3), "mask_conv.weight": (64, 1, 7, 7),
        "fg_trans16.weight": (64, 512, 1, 1), "fg_trans8.bias": (64,),
        "selfdc_16.gernerate_kernel.0.weight": (64, 64, 1, 1), "selfdc_8.fuse.weight": (512, 64, 3, 3),
        "upconv16.basicconv.0.weight": (256, 512, 3, 3), "upconv1.basicconv.1.num_batches_tracked": (),
        "classifier.weight": (2, 512, 1, 1),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key


@pytest.mark.slow
def test_fopa_checkpoint_round_trip_and_heatmap(tmp_path, obplanet):
    path = tmp_path / "20_state_final.pth"
    torch.save(obplanet.state_dict(), path)  # upstream saves a bare state dict
    loaded = load_obplanet(path)
    bg = _rgb(FOPA_DIR / "background/1674.jpg")
    fg = _rgb(FOPA_DIR / "foreground/1674.jpg")
    fm = np.asarray(Image.open(FOPA_DIR / "foreground_mask/1674.jpg").convert("L")) > 127
    scales = FOPA_SCALES[3:12:4]
    a, b = FopaScorer(net=obplanet), get_scorer("fopa", str(path))
    x = a.inputs(bg, fg, fm, scales[0])
    with torch.no_grad():
        assert torch.equal(obplanet(x[0][None], x[1][None], x[2][None]), loaded(x[0][None], x[1][None], x[2][None]))
    assert x[0].shape == x[1].shape == (3, 256, 256) and x[2].shape == (1, 256, 256)
    assert 0 <= x[2].min() and x[2].max() <= 1  # upstream's JPEG-cached mask: soft at its rim
    r = b(bg, fg, fm, scales=scales, top_k=4)
    H, W = bg.shape[:2]
    assert r.maps.shape == (len(scales), H, W) and 0 <= r.maps.min() and r.maps.max() <= 1
    assert r.boxes == b(bg, fg, fm, scales=scales, top_k=4).boxes  # deterministic ranking
    assert [s for s, _, _ in r.boxes] and all(s in scales for s, _, _ in r.boxes)
    scores = [sc for _, _, sc in r.boxes]
    assert scores == sorted(scores, reverse=True)
    oh, ow = fm.any(1).sum(), fm.any(0).sum()
    for s, (x1, y1, x2, y2), _ in r.boxes:
        assert 0 <= x1 < x2 <= W and 0 <= y1 < y2 <= H  # never leaves the image
        w, h = scaled_size(s, fg.shape[:2], (H, W))  # the whole foreground image is scaled, as upstream
        assert abs((x2 - x1) - ow * w / fg.shape[1]) <= 1 and abs((y2 - y1) - oh * h / fg.shape[0]) <= 1
    # a box centred on the border would leave the image: those centres score 0, as upstream
    w, h = scaled_size(scales[-1], fg.shape[:2], (H, W))
    wb, hb = int(w / W * 128), int(h / H * 128)
    assert r.maps[-1][:, : int(wb * W / 256)].max() == 0 and r.maps[-1][: int(hb * H / 256)].max() == 0


def test_scaled_size_follows_fopa():
    assert scaled_size(0.5, (100, 50), (400, 400)) == (100, 200)  # taller than the background: height-limited
    assert scaled_size(0.5, (50, 100), (400, 400)) == (200, 100)
    # libcom truncates the limiting side first and derives the other from the truncated value
    assert scaled_size(1 / 18, (219, 136), (512, 512)) == (17, 28)  # h = int(28.44), w = int(28 / 219 * 136)
    assert len(FOPA_SCALES) == 16 and FOPA_SCALES[0] == 1 / 18 and FOPA_SCALES[-1] == 16 / 18


@pytest.mark.slow
def test_bad_checkpoints_fail_clearly(tmp_path, obplanet):
    sd = obplanet.state_dict()
    cases = {
        "missing": {k: v for k, v in sd.items() if k != "classifier.weight"},
        "unexpected": {**sd, "extra.layer.weight": torch.zeros(1)},
        "other shapes": {**sd, "classifier.weight": torch.zeros(3, 512, 1, 1)},
    }
    for words, bad in cases.items():
        torch.save(bad, tmp_path / "bad.pth")
        with pytest.raises(CheckpointError, match=words) as e:
            load_obplanet(tmp_path / "bad.pth")
        assert "FOPA" in str(e.value)
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, tmp_path / "wrapped.pth")
    load_obplanet(tmp_path / "wrapped.pth")  # DataParallel prefix and a wrapper dict are fine
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        read_state_dict(tmp_path / "garbage.pth")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_obplanet(tmp_path / "nope.pth")
    torch.save(RainNet().state_dict(), tmp_path / "rain.pth")
    with pytest.raises(CheckpointError, match="not a FOPA"):
        load_obplanet(tmp_path / "rain.pth")
    with pytest.raises(ValueError, match="checkpoint"):
        get_scorer("fopa")
    with pytest.raises(ValueError, match="checkpoint"):
        get_harmonizer("rainnet")


def test_rain_moves_foreground_statistics_to_the_background():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 16, 16) * 3 + 1
    mask = torch.zeros(2, 1, 16, 16)
    mask[:, :, 4:10, 3:12] = 1
    x = x + 5 * mask  # a foreground with its own statistics
    out = RAIN(8)(x, mask)  # zero gammas/betas, as upstream initialises them
    fg, bg = mask.bool().expand_as(x), ~mask.bool().expand_as(x)
    for b in range(2):
        for c in range(8):
            xb = x[b, c][bg[b, c]]
            of = out[b, c][fg[b, c]]
            assert of.mean().item() == pytest.approx(xb.mean().item(), abs=1e-3)
            assert of.std(unbiased=False).item() == pytest.approx(xb.std(unbiased=False).item(), rel=1e-3)


@pytest.mark.slow
def test_rainnet_layout_load_and_harmonize(tmp_path, rainnet):
    sd = rainnet.state_dict()
    assert sum(p.numel() for p in rainnet.parameters()) == pytest.approx(54.76e6, rel=1e-3)  # RainNet's size
    expected = {
        "model_layer0.weight": (64, 3, 4, 4), "model_layer1.1.weight": (128, 64, 4, 4),
        "unet_block.down.1.weight": (512, 512, 4, 4), "unet_block.upnorm.foreground_gamma": (512,),
        "unet_block.submodule.submodule.submodule.up.3.weight": (512, 512, 4, 4),
        "model_layer11.1.weight": (1024, 256, 4, 4), "model_layer11norm.background_beta": (256,),
        "model_layer13att.0.bias": (128,), "model_out.1.weight": (128, 3, 4, 4), "model_out.1.bias": (3,),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    assert not any("downnorm" in k or "layer1norm" in k for k in sd)  # instance norms: no parameters
    torch.save(sd, tmp_path / "net_G.pth")
    loaded = load_rainnet(tmp_path / "net_G.pth")
    comp = _rgb(IHARMONY / "a0002_1_4.jpg")
    mask = np.asarray(Image.open(IHARMONY / "a0002_1.png").convert("L")) > 127
    out = get_harmonizer("rainnet", checkpoint=str(tmp_path / "net_G.pth"))(comp, mask)
    assert out.shape == comp.shape and out.dtype == np.uint8
    assert np.array_equal(out[~mask], comp[~mask])  # pred * mask + comp * (1 - mask)
    assert np.abs(out[mask].astype(int) - comp[mask]).mean() > 1  # and the object did change
    assert np.array_equal(out, RainNetHarmonizer(net=loaded)(comp, mask))
    del sd["model_out.1.bias"]
    torch.save(sd, tmp_path / "cut.pth")
    with pytest.raises(CheckpointError, match="missing.*model_out.1.bias"):
        load_rainnet(tmp_path / "cut.pth")
