"""A learned parametric colour-transform harmonizer (the PCT-Net idea, for a CPU).

A small MLP reads Lab and RGB statistics of the composite (the object, thin bands just
inside and outside its outline, the ring around it, the whole background) and predicts one
colour transform for the object: per-channel gamma, then a 3x3 matrix and an offset in RGB,

    out = clip(M @ x ** gamma + b),   x the object's RGB in [0, 1]

applied to the object's pixels only (the rest of the photo stays bit-exact). How far to
move (the strength) is learned, not tuned: the last layer starts at zero, i.e. the identity.

Trained by ``python -m pipeline.harmonize_net train`` on self-supervised composites of the
annotated real photos of :mod:`pipeline.realdata`: an object's colours perturbed by one of
``FAMILIES`` (or two chained), the original photo being the truth; the loss is the object's
RGB MSE (fMSE). Leave-one-family-out cross-validation (bench/bench_harmonize_net.py) trains
without a family and measures on it.
"""
from .data import FAMILIES, N_PIXELS, combo_of, make_samples, object_list, perturb, perturb_from
from .model import (ASSET_DIR, FEATURE_SIDE, N_FEATURES, N_PARAMS, NetHarmonizer, apply_params, build_net, canonical,
                    features, regions)
from .training import HarmonizeTrainConfig, fit, main, save, train

__all__ = ["ASSET_DIR", "FAMILIES", "FEATURE_SIDE", "N_FEATURES", "N_PARAMS", "N_PIXELS", "HarmonizeTrainConfig",
           "NetHarmonizer", "apply_params", "build_net", "canonical", "combo_of", "features", "fit", "main",
           "make_samples", "object_list", "perturb", "perturb_from", "regions", "save", "train"]
