"""The learned models' command lines (python -m pipeline.refine_net / pipeline.harmonize_net):
their flags are generated from the trainers' config dataclasses, and bad folds are refused
with the same rule in both."""
import subprocess
import sys
from dataclasses import fields

import pytest

from conftest import ROOT

MODELS = [("pipeline.refine_net", "RefineTrainConfig"), ("pipeline.harmonize_net", "HarmonizeTrainConfig")]


def _parser_of(module: str):
    """The argparse parser that ``main`` builds, captured instead of run."""
    import argparse
    import importlib

    mod = importlib.import_module(module)
    seen = {}
    real = argparse.ArgumentParser.parse_args

    def capture(self, args=None, namespace=None):
        seen["parser"] = self
        raise SystemExit(0)

    argparse.ArgumentParser.parse_args = capture
    try:
        with pytest.raises(SystemExit):
            mod.main([])
    finally:
        argparse.ArgumentParser.parse_args = real
    return mod, seen["parser"]


@pytest.mark.parametrize("module,config", MODELS)
def test_every_config_field_is_a_flag_with_its_default(module, config):
    mod, ap = _parser_of(module)
    cls = getattr(mod, config)
    dests = {a.dest: a for a in ap._actions}
    for f in fields(cls):
        if f.name == "photos":  # filled in by the trainer, not a setting
            assert f.name not in dests
            continue
        assert f.name in dests, f"{config}.{f.name} has no flag"
        assert dests[f.name].help, f"--{f.name} has no help"
    from pipeline.flags import config_from_args

    assert config_from_args(cls, ap.parse_args(["train"])) == cls()  # the flags' defaults are the config's
    cfg = config_from_args(cls, ap.parse_args(["train", "--folds", "0,2", "--seed", "7"]))
    assert cfg.folds == (0, 2) and cfg.seed == 7


@pytest.mark.slow
@pytest.mark.parametrize("module", [m for m, _ in MODELS])
@pytest.mark.parametrize("folds", ["0,3", "-1", "1,x"])
def test_out_of_range_folds_are_refused_before_training(module, folds, tmp_path):
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", module, "train", "--folds", folds, "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "--folds" in r.stderr
    assert not out.exists()  # refused before anything was written
