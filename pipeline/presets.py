"""Model presets: a short name -> the hub repository and files it needs -> a loaded model.

``embedded`` (the default) is the model shipped in ``assets/embedded_model`` and needs
nothing. Every other preset names a Hugging Face hub repository and the exact files it
needs; :func:`resolve` gets them through ``huggingface_hub.snapshot_download`` (the HF
cache: ``HF_HUB_CACHE``, ``HF_HOME``/hub or ``~/.cache/huggingface/hub``), with
huggingface_hub's progress bars when it downloads. With ``HF_HUB_OFFLINE=1``, and always in a
public studio (:mod:`pipeline.access`), only the cache is read; a preset whose files are not all there raises :class:`PresetUnavailable` naming
the preset, the repository, the missing files and the ``hf download`` command that fetches
them. This module is data and file resolution only; :func:`pipeline.loading.load_preset`, above
it, hands the local files to this project's own loaders (:func:`pipeline.generate.load_pipeline`,
:func:`pipeline.sam.load_sam_predictor`, :class:`pipeline.fopa.FopaScorer`), on CUDA in float16
when there is a GPU.

Only ``.safetensors``/``.json``/tokenizer files are fetched for diffusion models (the full
precision weights; float16 is applied when loading), never a repository's other files.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import PipelineError

KINDS = ("diffusion", "sam", "placement")
EMBEDDED_MODEL = Path(__file__).resolve().parents[1] / "assets" / "embedded_model"  # the ``embedded`` preset


class PresetUnavailable(PipelineError, RuntimeError):
    """A preset's files are neither in the HF cache nor downloadable from here."""


@dataclass(frozen=True)
class Preset:
    """One named model. ``files``: paths in ``repo`` that must all be there; an entry
    ``"a|b"`` is satisfied by either (the first is downloaded first). ``optional``: fetched
    when the repository has them (e.g. a feature extractor config some pipelines list)."""

    name: str
    kind: str  # one of KINDS
    label: str
    repo: str | None = None  # None: shipped with the project
    files: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    steps: int | None = None  # suggested sampling steps / guidance / side (diffusion presets)
    guidance: float | None = None
    side: int | None = None
    licence: str = ""
    note: str = ""
    single_file: bool = False  # load files[0] itself, not the snapshot folder

    @property
    def entry(self) -> str | None:
        """The file a single-file preset loads (None: the snapshot folder is loaded)."""
        return self.files[0].split("|")[0] if self.single_file else None


_TOKENIZER = ("merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json")


def _diffusers_files(xl: bool = False) -> tuple[str, ...]:
    """A diffusers Stable Diffusion folder: configs, tokenizers, full-precision safetensors."""
    files = ["model_index.json", "scheduler/scheduler_config.json"]
    for tok in ("tokenizer", "tokenizer_2")[: 1 + xl]:
        files += [f"{tok}/{f}" for f in _TOKENIZER]
    for enc in ("text_encoder", "text_encoder_2")[: 1 + xl]:
        files += [f"{enc}/config.json", f"{enc}/model.safetensors"]
    for part in ("unet", "vae"):
        files += [f"{part}/config.json", f"{part}/diffusion_pytorch_model.safetensors"]
    return tuple(files)


_FEATURE_EXTRACTOR = ("feature_extractor/preprocessor_config.json",)

PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("embedded", "diffusion", "embedded model (64x64 shapes, offline)", steps=25, guidance=5.0, side=64,
           note="trained by this project; eight classes of coloured shapes"),
    Preset("sd15", "diffusion", "Stable Diffusion 1.5", "stable-diffusion-v1-5/stable-diffusion-v1-5",
           _diffusers_files(), _FEATURE_EXTRACTOR, steps=25, guidance=7.5, side=512, licence="CreativeML OpenRAIL-M"),
    Preset("sd21-base", "diffusion", "Stable Diffusion 2.1 base", "stabilityai/stable-diffusion-2-1-base",
           _diffusers_files(), _FEATURE_EXTRACTOR, steps=25, guidance=7.5, side=512, licence="CreativeML OpenRAIL++-M"),
    Preset("sdxl-base", "diffusion", "Stable Diffusion XL base 1.0", "stabilityai/stable-diffusion-xl-base-1.0",
           _diffusers_files(xl=True), steps=30, guidance=5.0, side=1024, licence="CreativeML OpenRAIL++-M",
           note="about 7 GB of float32 weights; a GPU with 12 GB or more"),
    Preset("sd-turbo", "diffusion", "SD-Turbo (distilled SD 2.1, 1-4 steps)", "stabilityai/sd-turbo",
           _diffusers_files(), _FEATURE_EXTRACTOR, steps=2, guidance=0.0, side=512,
           licence="Stability AI Community (non-commercial research)",
           note="adversarially distilled: no classifier-free guidance, 1-4 steps"),
    Preset("sam-vit-b", "sam", "SAM ViT-B (transformers)", "facebook/sam-vit-base",
           ("config.json", "preprocessor_config.json", "model.safetensors|pytorch_model.bin"), licence="Apache-2.0"),
    Preset("sam-vit-b-pth", "sam", "SAM ViT-B (segment-anything .pth)", "ybelkada/segment-anything",
           ("checkpoints/sam_vit_b_01ec64.pth",), licence="Apache-2.0", single_file=True,
           note="Meta's sam_vit_b_01ec64.pth, mirrored on the hub (the original is on dl.fbaipublicfiles.com)"),
    Preset("fopa", "placement", "FOPA placement (libcom)", "BCMIZB/Libcom_pretrained_models", ("FOPA.pth",),
           licence="Apache-2.0", single_file=True, note="ObPlaNet_resnet18 as libcom's FOPAHeatMapModel loads it"),
)}


def get(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; one of {', '.join(PRESETS)}") from None


def names(kind: str | None = None) -> list[str]:
    """Preset names, of one kind (diffusion, sam, placement) or all."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown preset kind {kind!r}; one of {KINDS}")
    return [n for n, p in PRESETS.items() if kind is None or p.kind == kind]


def cache_dir() -> str:
    """The HF hub cache huggingface_hub uses, read from the environment now (huggingface_hub
    reads it once at import, so a later HF_HUB_CACHE would otherwise be ignored)."""
    env = os.environ
    if env.get("HF_HUB_CACHE"):
        return env["HF_HUB_CACHE"]
    if env.get("HUGGINGFACE_HUB_CACHE"):
        return env["HUGGINGFACE_HUB_CACHE"]
    if env.get("HF_HOME"):
        return os.path.join(env["HF_HOME"], "hub")
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def offline() -> bool:
    """Whether the hub may not be asked (``HF_HUB_OFFLINE`` 1/true/yes/on, any case, blanks
    ignored): the one reading of that variable, for presets and ``load_pipeline`` alike."""
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("1", "true", "yes", "on")


def downloads_allowed() -> bool:
    """Whether :func:`resolve` may ask the hub: not with HF_HUB_OFFLINE set, and never in a
    public studio, where the request would be made because of a visitor's input (whatever
    HF_HUB_OFFLINE says; see :mod:`pipeline.access`)."""
    from .public import is_public

    return not offline() and not is_public()


def cached(name: str) -> Path | None:
    """The local path of a preset's files when every one of them is already in the HF cache
    (what :func:`resolve` would return), else None. Reads the cache only (huggingface_hub's
    ``try_to_load_from_cache``: the ``refs/main`` snapshot): never a network request."""
    from huggingface_hub import try_to_load_from_cache

    p = get(name)
    if p.repo is None:
        return EMBEDDED_MODEL
    folder = None
    for entry in p.files:
        found = None
        for alt in entry.split("|"):
            hit = try_to_load_from_cache(p.repo, alt, cache_dir=cache_dir())
            if isinstance(hit, str) and Path(hit).is_file():
                found = Path(hit)
                break
        if found is None:
            return None
        folder = found.parents[len(Path(alt).parts) - 1]
    return folder / p.entry if p.entry else folder


def download_command(preset: Preset | str, missing: list[str] | None = None) -> str:
    """The ``hf download`` command that puts ``preset``'s files into the HF cache."""
    p = get(preset) if isinstance(preset, str) else preset
    files = [f.split("|")[0] for f in (missing if missing is not None else p.files)]
    return "hf download " + " ".join([p.repo, *files])


def _missing(folder: Path | None, p: Preset) -> list[str]:
    if folder is None:
        return list(p.files)
    return [f for f in p.files if not any((folder / alt).is_file() for alt in f.split("|"))]


def _unavailable(p: Preset, missing: list[str], reason: str) -> PresetUnavailable:
    shown = ", ".join(missing[:6]) + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
    how = ("the hub is not reachable (HF_HUB_OFFLINE=1): on a machine with network, run\n"
           if offline() else "where the hub is reachable, run\n")
    n = len(p.files)
    tail = ("(then copy that cache here), or unset HF_HUB_OFFLINE to download on first use" if offline()
            else "(the hub address is HF_ENDPOINT; a token in HF_TOKEN for gated repositories)")
    return PresetUnavailable(
        f"preset {p.name!r} ({p.label}) is not available: {reason}. It needs {n} file{'s' * (n != 1)} of the hub "
        f"repository {p.repo}; missing from the cache {cache_dir()}: {shown}.\n-> {how}   "
        f"HF_HUB_CACHE={cache_dir()} {download_command(p, missing)}\n   {tail}")


def _snapshot(p: Preset, patterns: list[str]) -> Path:
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(p.repo, allow_patterns=patterns, cache_dir=cache_dir(),
                                  local_files_only=not downloads_allowed()))


def resolve(name: str) -> Path:
    """The local path of a preset's files: the snapshot folder in the HF cache (a file for
    single-file presets); downloads what is missing unless offline. Raises PresetUnavailable."""
    p = get(name)
    if p.repo is None:
        return EMBEDDED_MODEL
    firsts = [f.split("|")[0] for f in p.files]
    folder = None
    try:
        folder = _snapshot(p, firsts + list(p.optional))
        if downloads_allowed():  # an alternative file name (e.g. pytorch_model.bin for model.safetensors)
            for entry in _missing(folder, p):
                for alt in entry.split("|")[1:]:
                    folder = _snapshot(p, [alt])
                    if (folder / alt).is_file():
                        break
    except Exception as e:  # LocalEntryNotFoundError offline, HTTP/network errors online
        raise _unavailable(p, _missing(folder, p), f"{type(e).__name__}: {str(e).splitlines()[0][:200]}") from e
    missing = _missing(folder, p)
    if missing:
        raise _unavailable(p, missing, "its files are only partly in the cache" if not downloads_allowed()
                           else "the repository lacks some of its files")
    return folder / p.entry if p.entry else folder


def describe(name: str, model=None) -> str:
    """One line for a UI or a log: the preset, its repository and revision, and where and
    in which precision ``model`` (as returned by :func:`load`) runs."""
    p = get(name)
    text = p.label if p.repo is None else f"{p.label} ({p.repo})"
    if model is not None:
        module = getattr(model, "unet", None) or getattr(model, "net", None) or getattr(model, "model", None)
        params = next(module.parameters(), None) if module is not None and hasattr(module, "parameters") else None
        if params is not None:
            text += f", {str(params.dtype).replace('torch.', '')} on {params.device}"
    return text


def preload_from_hub(preset_names: list[str]) -> list[str]:
    """Entries for a Space's README front matter ``preload_from_hub:`` list ("repo file,file"),
    so the Space downloads these presets' files into its HF cache when it is built."""
    lines = []
    for name in preset_names:
        p = get(name)
        if p.repo is not None:
            lines.append(f"{p.repo} " + ",".join(f.split("|")[0] for f in p.files))
    return lines


def resolve_checkpoint(value: str | None) -> str | None:
    """A plug-in's weights as a user gives them: a path or hub id (returned as it is), or a
    preset name (sam-vit-b, sam-vit-b-pth, fopa) resolved through the Hugging Face cache."""
    if value and value in names("sam") + names("placement"):
        return str(resolve(value))
    return value
