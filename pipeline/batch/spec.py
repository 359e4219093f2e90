"""What a batch run is: its settings, grouped by what they decide, and the identity of its candidates.

A *run* is fixed by the model, the :class:`~pipeline.generate.GenerationConfig` (template,
steps, guidance, size, refiner) and the base seed: they make :attr:`BatchSpec.run_key`, and
candidate ``k`` of class ``c`` always has the seed :func:`candidate_seed` and the store uid
:func:`candidate_uid`. The other settings change decisions (:class:`Policy`), speed
(``batch_size``) or what is pasted afterwards (:class:`InsertConfig`), never what a candidate is.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Sequence

from ..errors import ConfigError
from ..generate import GenerationConfig, ModelConfig
from ..harmonize import HARMONIZERS
from ..placement import SCORERS

RUN_TAG_PREFIX = "run-"


@dataclass(frozen=True)
class FilterConfig:
    """Quality filter (the paper's 10k -> 7k step). A candidate is dropped for every bound it breaks.

    - ``min_agreement`` / ``relative_agreement``: IoU between the attention mask and the
      refined mask (low = the attention and the image disagree about where the object is)
      must reach ``min_agreement`` and ``relative_agreement`` x the median of the class's
      warm-up candidates. The relative bound matters: thin shapes (stars, aeroplanes) have
      systematically lower agreement, and one absolute bound would drop a whole class;
    - ``min_area``/``max_area``: mask area as a fraction of the image;
    - ``min_contrast``: mean heat of the hottest 10 % minus mean heat of the coldest 50 %
      (low = diffuse attention, no clear object);
    - ``max_border``: fraction of the image border covered by the mask (high = the object is
      cut off by the frame).
    """

    min_agreement: float = field(default=0.5, metadata={"help": "filter: IoU(attention mask, refined mask)"})
    relative_agreement: float = field(default=0.95, metadata={
        "help": "filter: agreement must also reach this x the class's median warm-up agreement"})
    min_area: float = field(default=0.01, metadata={"help": "filter: smallest mask area (fraction of the image)"})
    max_area: float = field(default=0.85, metadata={"help": "filter: largest mask area (fraction of the image)"})
    min_contrast: float = field(default=0.3, metadata={"help": "filter: heat of hottest 10%% - coldest 50%%"})
    max_border: float = field(default=0.1, metadata={"help": "filter: fraction of the frame the mask covers"})

    def __post_init__(self):
        if not 0 <= self.min_area <= self.max_area <= 1:
            raise ConfigError(f"need 0 <= min_area <= max_area <= 1, got {self.min_area}, {self.max_area}")

    def reasons(self, metrics: dict, t_index: int, class_agreement: float | None = None) -> list[str]:
        """Why a candidate is dropped ([] = kept). ``t_index``: its threshold in the sweep;
        ``class_agreement``: the class's median warm-up agreement (None: absolute bound only)."""
        if "error" in metrics:
            return ["refine_failed"]
        out = []
        bound = self.min_agreement
        if class_agreement is not None:
            bound = max(bound, self.relative_agreement * class_agreement)
        if metrics["ious"][t_index] < bound:
            out.append("low_agreement")
        area = metrics["area"][t_index]
        if area < self.min_area:
            out.append("too_small")
        if area > self.max_area:
            out.append("too_large")
        if metrics["contrast"] < self.min_contrast:
            out.append("low_contrast")
        if metrics["border"][t_index] > self.max_border:
            out.append("touches_border")
        return out


@dataclass(frozen=True)
class Policy:
    """How candidates are judged: threshold per image or per class (calibrated on the first
    ``warmup`` candidates of each class, which also give the class's typical agreement), the
    filter, and how many candidates a class may use before the run gives up on it."""

    threshold_mode: str = field(default="per-image", metadata={
        "help": "mask threshold: chosen per image, or calibrated per class on --warmup candidates", "flag": "--threshold",
        "choices": ("per-image", "per-class")})
    warmup: int = field(default=8, metadata={
        "help": "candidates per class that calibrate the class's threshold and agreement (0: absolute bounds only)"})
    filter: FilterConfig = field(default_factory=FilterConfig)
    max_candidates: int | None = field(default=None, metadata={"help": "per class (default 3 x per-class + warmup)"})

    def __post_init__(self):
        if self.threshold_mode not in ("per-image", "per-class"):
            raise ConfigError(f"threshold_mode is per-image or per-class, not {self.threshold_mode!r}")
        if self.warmup < 0:
            raise ConfigError(f"warmup must be >= 0, got {self.warmup}")
        if self.threshold_mode == "per-class" and self.warmup < 1:
            raise ConfigError("per-class thresholds are calibrated on warm-up candidates: warmup must be >= 1")


OBJECT_SOURCES = ("generated", "bank", "both")


@dataclass(frozen=True)
class InsertConfig:
    """Insertion after filtering: ``objects`` (0 or 1) thesaurus-suggested objects pasted into
    each kept sample, placed by the ``scorer`` and blended by the ``harmonizer`` (registry
    names; None: the default method); ``*_checkpoint``: weights for plug-ins that need them.

    ``object_source`` says where the object comes from: ``generated`` (the model draws the
    suggested class, among the batch's classes), ``bank`` (an instance of the suggested class
    cut out of an accepted sample already in the store: imported photos, accepted samples;
    not crowd regions, not this run's own samples, so a resumed run sees the same bank), or
    ``both`` (the best suggestion among the batch's and the bank's classes, cut from the bank
    when the bank has it, else generated)."""

    objects: int = field(default=0, metadata={
        "help": "1: also store a composite per kept sample with a thesaurus-suggested object inserted",
        "choices": (0, 1), "flag": "--insert"})
    object_source: str = field(default="generated", metadata={
        "help": "where inserted objects come from: generated by the model, cut from the store's accepted samples "
                "(bank), or both (the bank when it has the suggested class)", "choices": OBJECT_SOURCES,
        "flag": "--insert-source"})
    thesaurus: str | None = field(default=None, metadata={"help": "thesaurus table (default: shipped VOC or COCO table)"})
    scorer: str = field(default="default", metadata={"help": "placement scorer for inserted objects",
                                                     "choices": SCORERS.names})
    scorer_checkpoint: str | None = field(default=None, metadata={"help": "weights of the placement scorer (fopa)"})
    harmonizer: str | None = field(default=None, metadata={
        "help": "harmonization method for inserted objects (default: the learned one)", "choices": HARMONIZERS.names})
    harmonizer_checkpoint: str | None = field(default=None, metadata={"help": "weights of the harmonizer (rainnet)"})

    def __post_init__(self):
        if self.object_source not in OBJECT_SOURCES:
            raise ConfigError(f"object_source is one of {OBJECT_SOURCES}, not {self.object_source!r}")


@dataclass(frozen=True)
class BatchSpec:
    """Everything a batch run needs. Build it nested, or flat with :meth:`of`:
    ``BatchSpec.of(("ball", "star"), 3, steps=6, batch_size=2, warmup=4)``."""

    classes: tuple[str, ...]
    per_class: int
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    seed: int = 0
    policy: Policy = field(default_factory=Policy)
    insertion: InsertConfig = field(default_factory=InsertConfig)
    batch_size: int = 4  # prompts per UNet call
    refiner_checkpoint: str | None = None  # weights for refiners that need them (sam); not part of the run

    def __post_init__(self):
        object.__setattr__(self, "classes", tuple(self.classes))
        if not self.classes:
            raise ConfigError("no classes given")
        if self.per_class < 1:
            raise ConfigError(f"per_class must be >= 1, got {self.per_class}")
        if self.batch_size < 1:
            raise ConfigError("batch_size must be >= 1")

    @classmethod
    def of(cls, classes: Sequence[str], per_class: int, **settings) -> "BatchSpec":
        """A spec from flat keywords, each routed to the group that owns it (``steps`` to
        ``generation``, ``warmup`` to ``policy``, ``min_area`` to ``policy.filter``, ``model``
        to ``model.model``...). An unknown keyword is a ConfigError."""
        groups = {"generation": GenerationConfig, "model": ModelConfig, "policy": Policy, "insertion": InsertConfig}
        parts: dict[str, dict] = {g: {} for g in groups}
        filt: dict = {}
        top: dict = {}
        own = {f.name for f in fields(cls)} - set(groups)
        filter_names = {f.name for f in fields(FilterConfig)}
        for key, value in settings.items():
            owner = next((g for g, c in groups.items() if key in {f.name for f in fields(c)}), None)
            if key in own:
                top[key] = value
            elif owner:
                parts[owner][key] = value
            elif key in filter_names:
                filt[key] = value
            else:
                raise ConfigError(f"unknown batch setting {key!r}")
        if filt:
            parts["policy"]["filter"] = replace(parts["policy"].get("filter", FilterConfig()), **filt)
        return cls(tuple(classes), per_class, **{g: groups[g](**kw) for g, kw in parts.items()}, **top)

    @property
    def run_key(self) -> str:
        g = self.generation
        keyed = dict(model=self.model.label, config=self.model.config, template=g.template, steps=g.steps,
                     guidance=g.guidance, height=g.height, width=g.width, refiner=g.refiner, seed=self.seed)
        if g.selector != "paper":  # the paper's rule keys as before, so earlier runs keep their key
            keyed["selector"] = g.selector
        return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:12]

    @property
    def run_tag(self) -> str:
        return RUN_TAG_PREFIX + self.run_key

    @property
    def candidate_limit(self) -> int:
        return self.policy.max_candidates or 3 * self.per_class + self.policy.warmup

    def to_dict(self) -> dict:
        d = asdict(self)
        d["run_key"] = self.run_key
        return d


def resolve_classes(spec: str | Sequence[str]) -> tuple[str, ...]:
    """``voc``, ``coco``, ``embedded`` or a comma-separated list -> class names."""
    if isinstance(spec, str):
        key = spec.strip().lower()
        if key in ("voc", "coco"):
            from ..vocab import VOCABULARIES

            return tuple(VOCABULARIES[key])
        if key == "embedded":
            from ..embedded.world import CLASS_NAMES

            return tuple(CLASS_NAMES)
        spec = spec.split(",")
    names = tuple(dict.fromkeys(c.strip() for c in spec if c.strip()))
    if not names:
        raise ConfigError("no classes given")
    return names


def candidate_seed(base_seed: int, class_name: str, k: int) -> int:
    """The seed of candidate k of a class: stable across runs, machines and Python versions,
    in the one seed range 0..2**32-1 (:data:`pipeline.errors.SEED_MAX`), and collision-free
    within a class: k -> (a * k + b) mod 2**32 with an odd ``a`` is a bijection, so no two
    candidates of one class share a seed (hashing each k could: 3 pairs per class at 7000
    candidates with 31 bits). ``a`` and ``b`` come from a hash of (base seed, class)."""
    digest = hashlib.sha256(f"{base_seed}/{class_name}".encode()).digest()
    a = int.from_bytes(digest[:4], "little") | 1
    b = int.from_bytes(digest[4:8], "little")
    return (a * int(k) + b) % 2**32


def candidate_uid(run_key: str, class_name: str, k: int) -> str:
    return f"batch-{run_key}-{class_name}-{k:06d}"
