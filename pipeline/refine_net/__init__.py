"""A light learned refiner: a small CNN that turns (RGB photo, coarse map) into an object mask.

CascadePSP/SegFix-style: the coarse map (a heat map in [0, 1]) chooses a square crop around
its object (the box of ``heat >= 0.5`` grown by ``MARGIN`` on every side), the crop is
resampled to ``CROP`` x ``CROP``, and a small U-Net (~0.1 M parameters) reads RGB + coarse
map + "inside the photo" and predicts the object's logit; the logit is mapped back to the
photo, its probability blended with the coarse map (``blend``, chosen after training by
``python -m pipeline.refine_net calibrate`` on the training photos and stored in the weights'
config.json) and thresholded at 0.5. Pixels outside the crop keep only the coarse map's share.

It is trained by ``python -m pipeline.refine_net train`` on self-supervised degradations of
the annotated real photos of :mod:`pipeline.realdata` (random morphology, elastic warps, blur,
low-resolution resampling, shape priors, shifts, spurious blobs and holes, then random
contrast of the map; photos flipped, rescaled and colour-jittered). Training is resumable
(``<out>/_train/state.pt``, kill it and run the same command again) and reproducible (the
batch of step ``s`` is drawn from ``numpy.random.default_rng([seed, s])``; torch on one thread).

``LearnedRefiner`` follows the refiner call shape of :mod:`pipeline.refine`.
"""
from .data import TEST_KINDS, coarse_map, jitter_photo, random_coarse, training_sample
from .model import ASSET_DIR, CROP, MARGIN, LearnedRefiner, build_net, crop_box, crop_matrix, net_input
from .training import BLENDS, RefineTrainConfig, calibrate, main, train

__all__ = ["ASSET_DIR", "BLENDS", "CROP", "MARGIN", "TEST_KINDS", "LearnedRefiner", "RefineTrainConfig", "build_net",
           "calibrate", "coarse_map", "crop_box", "crop_matrix", "jitter_photo", "main", "net_input",
           "random_coarse", "train", "training_sample"]
