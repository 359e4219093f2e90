"""What the README and CI promise: requirements that cover every import, a CI that installs
into a fresh virtualenv and runs the README's test command, the app's documented options,
the embedded model loading the stock diffusers way, tests that skip without ../shared."""
import ast
import os
import re
import subprocess
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from conftest import ROOT

README = (ROOT / "README.md").read_text()
STDLIB = set(sys.stdlib_module_names)


def _requirements(name: str) -> set[str]:
    out = set()
    for line in (ROOT / name).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line.startswith("-r "):
            out |= _requirements(line[3:].strip())
        elif line:
            out.add(re.split(r"[<>=!~\[ ;]", line)[0].lower().replace("_", "-"))
    return out


def _imports(paths) -> set[str]:
    mods = set()
    for path in paths:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods.add(node.module.split(".")[0])
    return mods


OPTIONAL = {"spaces"}  # ZeroGPU's package: present on Spaces, optional elsewhere (pipeline.gpu)


@pytest.mark.parametrize("req, folders", [
    ("requirements.txt", ["pipeline", "studio", "app.py"]),
    ("requirements-dev.txt", ["pipeline", "studio", "app.py", "tests", "bench"]),
])
@pytest.mark.slow
def test_every_third_party_import_is_a_direct_requirement(req, folders):
    files = []
    for f in folders:
        p = ROOT / f
        files += [p] if p.is_file() else [q for q in p.rglob("*.py") if "upstream_ref" not in q.parts]
    local = {"pipeline", "studio", "app", "conftest", "studio_server", "upstream_ref", "tests", "bench", "_results"}
    local |= {p.stem for p in (ROOT / "tests").glob("*.py")} | {p.stem for p in (ROOT / "bench").glob("*.py")}
    third = _imports(files) - STDLIB - local - OPTIONAL
    dists = packages_distributions()
    wanted = _requirements(req)
    missing = {}
    for mod in sorted(third):
        names = {d.lower().replace("_", "-") for d in dists.get(mod, [mod])}
        if not names & wanted:
            missing[mod] = sorted(names)
    assert not missing, f"imported but not in {req}: {missing}"


def test_ci_builds_a_fresh_virtualenv_and_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    command = re.search(r"^    (pip install -r requirements-dev\.txt && .*pytest.*)$", README, re.M).group(1)
    assert command in ci, "the README's test command must be what CI runs"
    assert re.search(r"rm -rf \"\$VENV\"\npython3 -m venv \"\$VENV\"", ci) and 'source "$VENV/bin/activate"' in ci
    assert ci.index("python3 -m venv") < ci.index(command)
    assert "exit 1" in ci.split('"$rc" -eq 5')[1].split("fi")[0]  # no tests collected fails


def test_readme_app_options_exist_and_hub_ids_are_not_forced_offline():
    sys.path.insert(0, str(ROOT))
    import app

    flags = {f for line in README.splitlines() if "python app.py" in line
             for f in re.findall(r"(--[a-z-]+)", line.split("python app.py", 1)[1].split("#")[0])}
    known = {o for a in app.build_parser()._actions for o in a.option_strings}
    assert flags <= known, f"the README shows options app.py does not take: {flags - known}"
    assert {"--model", "--device", "--dtype"} <= flags
    args = app.parse_args(["--model", "x/y", "--device", "cpu", "--dtype", "float32", "--store", "s"])
    assert (args.model, args.device, args.dtype) == ("x/y", "cpu", "float32")
    env = {}
    app.configure_hub("stable-diffusion-v1-5/stable-diffusion-v1-5", env)
    assert "HF_HUB_OFFLINE" not in env  # a hub id may download when the network is there
    app.configure_hub("embedded", env)
    assert env["HF_HUB_OFFLINE"] == "1"  # nothing at start-up needs the hub
    env = {"HF_HUB_OFFLINE": "0"}
    app.configure_hub("embedded", env)
    assert env["HF_HUB_OFFLINE"] == "0"  # the user's choice wins


def test_readme_cli_subcommands_exist():
    from pipeline.__main__ import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name in set(re.findall(r"python -m pipeline ([a-z]+)", README)):
        assert name in sub.choices, f"README names `python -m pipeline {name}`"


@pytest.mark.slow
def test_embedded_model_loads_the_stock_diffusers_way():
    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(ROOT / "assets" / "embedded_model")  # no dtype, as a user would
    assert {p.dtype for m in (pipe.unet, pipe.vae, pipe.text_encoder) for p in m.parameters()} == {torch.float32}
    out = pipe("a photograph of a ball", num_inference_steps=2, output_type="np",
               generator=torch.Generator().manual_seed(0))
    assert out.images.shape == (1, 64, 64, 3) and out.images.std() > 0.01


@pytest.mark.slow
def test_tests_skip_without_the_shared_data(tmp_path):
    """With ../shared absent, tests that read it are skipped, not errors."""
    env = dict(os.environ, DIFFUMASK_SHARED_DATA=str(tmp_path / "no-shared-data"), HF_HUB_OFFLINE="1")
    files = ["tests/test_thesaurus.py", "tests/test_refine.py", "tests/test_bank.py"]
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=900)
    tail = out.stdout.strip().splitlines()[-1]
    assert out.returncode == 0, out.stdout[-3000:]
    assert "skipped" in tail and "error" not in tail and "failed" not in tail, tail


@pytest.mark.slow
def test_a_wrong_shared_data_path_fails_instead_of_skipping(tmp_path):
    """When the shared data folder is there, a file missing under it (a wrong path, incomplete
    data) fails the test, through shared(...) and through a plain open alike; only an absent
    folder skips."""
    probe = tmp_path / "test_probe.py"
    probe.write_text(
        "from conftest import SHARED, shared\n"
        "def test_helper():\n    shared('coco-mini', 'no-such.json')\n"
        "def test_plain_open():\n    (SHARED / 'no-such-dir' / 'x.json').read_text()\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "tests"), HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "conftest", str(probe)]
    present = tmp_path / "shared-data"
    present.mkdir()
    out = subprocess.run(cmd, cwd=tmp_path, env=dict(env, DIFFUMASK_SHARED_DATA=str(present)),
                         capture_output=True, text=True, timeout=300)
    assert "2 failed" in out.stdout.strip().splitlines()[-1], out.stdout[-2000:]
    out = subprocess.run(cmd, cwd=tmp_path, env=dict(env, DIFFUMASK_SHARED_DATA=str(tmp_path / "absent")),
                         capture_output=True, text=True, timeout=300)
    assert "2 skipped" in out.stdout.strip().splitlines()[-1], out.stdout[-2000:]
