"""Cross-attention capture for diffusers UNets, with running sums (memory flat in steps).

Usage, in the manner of DAAM::

    with trace(pipe, "a photograph of a dog", "dog") as tracer:
        image = pipe("a photograph of a dog", generator=g).images[0]
    maps = tracer.maps()[0]               # one AttentionMaps per generated image
    heat = maps.heat_map()                # (H, W) float32 in [0, 1], image size

What is recorded, per generated image: softmax(QK^T/sqrt(d)) of every cross-attention
(``attn2``) layer, for the class word's tokens only (a word split into several tokens
uses all of them), for the conditional half of classifier-free guidance only, summed over
heads, tokens and layers into one running sum per attention resolution and per timestep
bucket. Nothing is stored per step, so memory does not grow with the number of steps.
Optionally, the head-averaged self-attention (``attn1``) at one resolution is summed too:
it is the pixel affinity that the ``affinity`` refiner propagates the heat map with.

The recorders wrap the pipeline's own attention processors and return their output
untouched, so a traced generation is pixel-identical to a plain one with the same seed.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from .masks import quantize_heat, upsample  # noqa: F401 (upsample re-exported)
from .errors import ConfigError, PipelineError

N_TRAIN_TIMESTEPS = 1000


class WordNotInPromptError(PipelineError, ValueError):
    """The class word's tokens do not occur in the (tokenised, truncated) prompt."""


def find_word_tokens(tokenizer, prompt: str, word: str) -> list[int]:
    """Positions of ``word``'s tokens in the tokenised ``prompt`` (BOS at position 0).

    A word that the BPE splits ("aeroplane" -> "aerop", "lane</w>") yields all its pieces;
    every occurrence of the word counts. Raises WordNotInPromptError when absent.
    """
    if not word or not word.strip():
        raise WordNotInPromptError("the class word is empty")
    ids = tokenizer(prompt, truncation=True, max_length=tokenizer.model_max_length).input_ids
    positions: list[int] = []
    # Match the word as a whole phrase; a multi-word class ("dining table") is one phrase.
    sub = tokenizer(word.strip(), add_special_tokens=False).input_ids
    for start in range(len(ids) - len(sub) + 1):
        if ids[start : start + len(sub)] == sub:
            positions.extend(range(start, start + len(sub)))
    if not positions:
        pieces = tokenizer.convert_ids_to_tokens(ids)
        raise WordNotInPromptError(
            f"{word!r} (tokens {tokenizer.convert_ids_to_tokens(sub)}) does not occur in the prompt "
            f"{prompt!r} (tokens {pieces}); put the class word in the prompt, spelled the same way")
    return positions


@dataclass(frozen=True)
class CaptureConfig:
    """What to record. ``resolutions``: attention-map heights to keep (None: all; for a
    512x512 SD image they are 64/32/16/8, for the 64x64 embedded model 16/8/4).
    ``n_time_buckets``: the 1000 training timesteps are split into this many equal ranges,
    kept apart so that heat maps over any bucket-aligned timestep range can be computed
    after generation. ``self_attention_max_tokens``: record head-averaged self-attention at
    the largest resolution with at most this many pixels (0, the default, disables it: it
    costs ~1.5x generation time and only the ``affinity`` refiner needs it; see
    :func:`pipeline.refine.capture_for`)."""

    resolutions: tuple[int, ...] | None = None
    timestep_range: tuple[int, int] = (0, N_TRAIN_TIMESTEPS - 1)
    n_time_buckets: int = 10
    self_attention_max_tokens: int = 0


@dataclass
class AttentionMaps:
    """The captured attention of one generated image (numpy, float32).

    ``sums[h]``: (n_buckets, h, w) summed probabilities of the class word, ``counts[h]``:
    (n_buckets,) how many layer calls went into each bucket. ``affinity``: (N, N) row-
    stochastic self-attention of the ``affinity_hw`` resolution, or None.
    """

    image_size: tuple[int, int]
    sums: dict[int, np.ndarray]
    counts: dict[int, np.ndarray]
    bucket_edges: np.ndarray  # (n_buckets + 1,) timestep edges, ascending
    affinity: np.ndarray | None = None
    affinity_hw: tuple[int, int] | None = None

    @property
    def resolutions(self) -> list[int]:
        return sorted(self.sums, reverse=True)

    def _buckets(self, timesteps: tuple[int, int] | None) -> np.ndarray:
        n = len(self.bucket_edges) - 1
        if timesteps is None:
            return np.ones(n, bool)
        lo, hi = timesteps
        centres = (self.bucket_edges[:-1] + self.bucket_edges[1:]) / 2
        return (centres >= lo) & (centres <= hi)

    def resolution_map(self, res: int, timesteps: tuple[int, int] | None = None) -> np.ndarray:
        """Mean attention at one resolution, (h, w), not normalised; zeros if nothing recorded."""
        sel = self._buckets(timesteps)
        count = self.counts[res][sel].sum()
        total = self.sums[res][sel].sum(0)
        return total / count if count > 0 else np.zeros_like(total)

    def heat_map(self, resolutions: Sequence[int] | None = None, timesteps: tuple[int, int] | None = None,
                 weights: dict[int, float] | None = None) -> np.ndarray:
        """Paper eq. 2: per-resolution means upsampled to image size, averaged (optionally
        weighted), then min-max normalised, rounded to the store's float16. Returns (H, W) float32 in [0, 1]; all zeros when
        nothing was recorded or the map is flat (no evidence of the object anywhere)."""
        res_list = [r for r in (resolutions or self.resolutions) if r in self.sums]
        if not res_list:
            raise ConfigError(f"none of the resolutions {list(resolutions or [])} were captured; "
                             f"captured: {self.resolutions}")
        acc = np.zeros(self.image_size, np.float32)
        total_w = 0.0
        for r in res_list:
            w = 1.0 if weights is None else float(weights.get(r, 0.0))
            m = self.resolution_map(r, timesteps)
            if w == 0 or not np.any(m):
                continue
            acc += w * upsample(m, self.image_size)
            total_w += w
        # rounded as the curation store keeps it, so a mask shown is the mask re-derived later
        return quantize_heat(normalise(acc) if total_w > 0 else acc)

    def resolution_heat_maps(self, timesteps: tuple[int, int] | None = None) -> dict[int, np.ndarray]:
        """Each resolution alone, upsampled to image size and normalised to [0, 1] (for display)."""
        return {r: normalise(upsample(self.resolution_map(r, timesteps), self.image_size)) for r in self.resolutions}


def normalise(m: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1]; NaN/inf become 0; a flat map becomes all zeros."""
    m = np.nan_to_num(m.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(m.min()), float(m.max())
    return (m - lo) / (hi - lo) if hi - lo > 1e-12 else np.zeros_like(m)


class _Recorder:
    """Wraps one attention processor; returns its output unchanged and records on the side."""

    def __init__(self, tracer: "AttentionTracer", inner, kind: str):
        self.tracer, self.inner, self.kind = tracer, inner, kind

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        stash = self.tracer._projections
        stash.clear()
        out = self.inner(attn, hidden_states, encoder_hidden_states=encoder_hidden_states,
                         attention_mask=attention_mask, temb=temb, **kwargs)
        if self.tracer._recording:
            with torch.no_grad():
                if self.kind == "cross":
                    self.tracer._record_cross(attn, hidden_states, encoder_hidden_states,
                                              stash.get((id(attn), "q")), stash.get((id(attn), "k")))
                else:
                    self.tracer._record_self(attn, hidden_states)
        stash.clear()
        return out


class AttentionTracer:
    """Installs recorders on a UNet's attention layers and keeps the running sums.

    ``token_indices[i]`` are the class-word token positions for prompt ``i``; the UNet
    batch is [unconditional..., conditional...] under classifier-free guidance (diffusers'
    convention) and images of one prompt are consecutive (``num_images_per_prompt``).
    """

    def __init__(self, pipe, token_indices: Sequence[Sequence[int]], config: CaptureConfig = CaptureConfig()):
        self.pipe, self.unet = pipe, pipe.unet
        self.config = config
        self.token_indices = [list(t) for t in token_indices]
        self.bucket_edges = np.linspace(0, N_TRAIN_TIMESTEPS, config.n_time_buckets + 1)
        self._sums: dict[tuple[int, int], torch.Tensor] = {}
        self._counts: dict[tuple[int, int], torch.Tensor] = {}
        self._affinity: torch.Tensor | None = None
        self._affinity_hw: tuple[int, int] | None = None
        self._affinity_count = 0
        self._latent_hw: tuple[int, int] | None = None
        self._bucket = 0
        self._recording = False
        self._saved_processors = None
        self._hook = None
        self._selection_cache: dict[tuple, torch.Tensor] = {}
        # the query/key projections the processor itself computed, caught by forward hooks on
        # to_q/to_k, so recording does not compute them a second time
        self._projections: dict[tuple[int, str], torch.Tensor] = {}
        self._projection_hooks: list = []
        self._listeners: list = []

    @property
    def state_bytes(self) -> int:
        """Bytes the running sums hold: what capture keeps, the same at 10 steps as at 50."""
        return sum(t.numel() * t.element_size() for t in self._sums.values())

    def on_record(self, listener) -> None:
        """Call ``listener(hw, maps)`` with every cross-attention call's word maps as they are
        summed: ``hw`` (h, w) of the map, ``maps`` (n_images, h, w) float32 summed over heads
        (a view: copy it to keep it). For tools that keep every step's maps, as DAAM does."""
        self._listeners.append(listener)

    # -- installation ---------------------------------------------------------------
    def install(self) -> "AttentionTracer":
        procs = self.unet.attn_processors
        self._saved_processors = dict(procs)
        wrapped = {}
        for name, proc in procs.items():
            if name.endswith("attn2.processor"):
                wrapped[name] = _Recorder(self, proc, "cross")
            elif name.endswith("attn1.processor") and self.config.self_attention_max_tokens > 0:
                wrapped[name] = _Recorder(self, proc, "self")
            else:
                wrapped[name] = proc
        names = list(wrapped)
        self.unet.set_attn_processor(wrapped)  # (empties ``wrapped``: diffusers pops what it sets)
        self._hook = self.unet.register_forward_pre_hook(self._before_unet, with_kwargs=True)
        for name in names:
            if name.endswith("attn2.processor"):
                attn = self.unet.get_submodule(name[: -len(".processor")])
                for proj, tag in ((getattr(attn, "to_q", None), "q"), (getattr(attn, "to_k", None), "k")):
                    if proj is not None:
                        self._projection_hooks.append(proj.register_forward_hook(self._stash(id(attn), tag)))
        return self

    def _stash(self, attn_id: int, tag: str):
        def hook(module, args, output):
            if self._recording:
                self._projections[(attn_id, tag)] = output
        return hook

    def remove(self) -> None:
        if self._saved_processors is not None:
            self.unet.set_attn_processor(self._saved_processors)
            self._saved_processors = None
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        for h in self._projection_hooks:
            h.remove()
        self._projection_hooks.clear()
        self._projections.clear()

    def _before_unet(self, module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        t = args[1] if len(args) > 1 else kwargs["timestep"]
        t = float(torch.as_tensor(t).flatten()[0])
        self._latent_hw = tuple(sample.shape[-2:])
        lo, hi = self.config.timestep_range
        self._recording = lo <= t <= hi
        self._bucket = int(np.clip(np.searchsorted(self.bucket_edges, t, side="right") - 1, 0,
                                   len(self.bucket_edges) - 2))

    # -- recording --------------------------------------------------------------------
    def _map_hw(self, n_tokens: int) -> tuple[int, int]:
        # The UNet's stride-2 convolutions (padding 1) take a side n to ceil(n / 2), so the
        # attention grids are the latent size halved-and-rounded-up 0, 1, 2... times. A ratio
        # guess (sqrt(latent / tokens)) picks the wrong factorisation at odd non-square sizes
        # (72x40 images: 15 tokens read as 6x2).
        lh, lw = self._latent_hw
        h, w = lh, lw
        while h * w > n_tokens and (h > 1 or w > 1):
            h, w = -(-h // 2), -(-w // 2)
        if h * w == n_tokens:
            return h, w
        f = max(1, round(math.sqrt(lh * lw / n_tokens)))  # another downsampling rule: best guess
        h = -(-lh // f)
        if n_tokens % h:
            raise PipelineError(f"cannot tell the attention grid of {n_tokens} tokens at latent size {lh}x{lw}; "
                                "use an image size that is a multiple of 64")
        return h, n_tokens // h

    def _cond(self, x: torch.Tensor) -> torch.Tensor:
        # Under CFG diffusers stacks [uncond, cond]; only the conditional half is about the word.
        if getattr(self.pipe, "do_classifier_free_guidance", False) and x.shape[0] % 2 == 0:
            return x[x.shape[0] // 2 :]
        return x

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).transpose(1, 2) if x.ndim == 4 else x

    def _qk(self, attn, x: torch.Tensor, ctx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = x.shape[0]
        q = attn.to_q(x).view(b, -1, attn.heads, attn.to_q.out_features // attn.heads).transpose(1, 2)
        k = attn.to_k(ctx).view(b, -1, attn.heads, attn.to_k.out_features // attn.heads).transpose(1, 2)
        return q.float(), k.float()

    def _selection(self, n_images: int, n_ctx: int, device) -> torch.Tensor:
        key = (n_images, n_ctx, str(device))
        if key not in self._selection_cache:
            self._selection_cache[key] = self._build_selection(n_images, n_ctx, device)
        return self._selection_cache[key]

    def _build_selection(self, n_images: int, n_ctx: int, device) -> torch.Tensor:
        """(n_images, n_ctx) 1 at the class word's token positions of each image's prompt."""
        per_prompt = max(1, n_images // max(1, len(self.token_indices)))
        sel = torch.zeros(n_images, n_ctx, device=device)
        for i in range(n_images):
            idx = [j for j in self.token_indices[min(i // per_prompt, len(self.token_indices) - 1)] if j < n_ctx]
            sel[i, idx] = 1.0
        return sel

    def _record_cross(self, attn, hidden_states, encoder_hidden_states, q_proj=None, k_proj=None) -> None:
        if encoder_hidden_states is None:
            return
        x = self._cond(self._flat(hidden_states))
        ctx = self._cond(encoder_hidden_states)
        hw = self._map_hw(x.shape[1])
        if self.config.resolutions is not None and hw[0] not in self.config.resolutions:
            return
        full_batch = hidden_states.shape[0]
        if (q_proj is not None and k_proj is not None and q_proj.shape[0] == full_batch == k_proj.shape[0]
                and q_proj.shape[1] == x.shape[1] and k_proj.shape[1] == ctx.shape[1]):
            b, d = x.shape[0], q_proj.shape[-1] // attn.heads
            q = self._cond(q_proj).reshape(b, -1, attn.heads, d).transpose(1, 2).float()
            k_t = self._cond(k_proj).reshape(b, -1, attn.heads, d).permute(0, 2, 3, 1).float()
        else:  # a processor that does not call to_q/to_k (fused projections): compute them here
            if attn.norm_cross:
                ctx = attn.norm_encoder_hidden_states(ctx)
            q, k = self._qk(attn, x, ctx)
            k_t = k.transpose(-1, -2)
        # the scale goes onto q (N x d) rather than the scores (N x L, L = 77 > d), and k is
        # laid out (d, L) for the matmul directly: together about half the recording time
        probs = torch.softmax((q * attn.scale) @ k_t, dim=-1)  # (b, heads, N, L)
        sel = self._selection(x.shape[0], ctx.shape[1], probs.device)
        # summed over the word's tokens (a batched matmul: ~1.5x faster than einsum here), then heads
        word = (probs @ sel[:, None, :, None]).sum(1)[..., 0]
        if hw not in self._sums:
            self._sums[hw] = torch.zeros(self.config.n_time_buckets, x.shape[0], *hw, device=probs.device)
            self._counts[hw] = torch.zeros(self.config.n_time_buckets)
        maps = word.view(-1, *hw)
        self._sums[hw][self._bucket] += maps
        self._counts[hw][self._bucket] += attn.heads
        for listener in self._listeners:
            listener(hw, maps)

    def _record_self(self, attn, hidden_states) -> None:
        x = self._cond(self._flat(hidden_states))
        n = x.shape[1]
        if n > self.config.self_attention_max_tokens:
            return
        hw = self._map_hw(n)
        if self._affinity_hw is not None and hw != self._affinity_hw:
            if hw[0] * hw[1] <= self._affinity_hw[0] * self._affinity_hw[1]:
                return  # keep the largest resolution that fits
            self._affinity, self._affinity_count = None, 0
        self._affinity_hw = hw
        q, k = self._qk(attn, x, x)
        probs = torch.softmax((q @ k.transpose(-1, -2)) * attn.scale, dim=-1).mean(1)  # (b, N, N)
        self._affinity = probs if self._affinity is None else self._affinity + probs
        self._affinity_count += 1

    # -- results ----------------------------------------------------------------------
    def maps(self, image_size: tuple[int, int] | None = None) -> list[AttentionMaps]:
        """One AttentionMaps per generated image; ``image_size`` defaults to latent size x VAE factor."""
        if not self._sums:
            raise PipelineError("no cross-attention was recorded: was the pipeline called inside trace(), "
                               "and do the resolutions/timestep range select any layer?")
        if image_size is None:
            f = getattr(self.pipe, "vae_scale_factor", 8)
            image_size = (self._latent_hw[0] * f, self._latent_hw[1] * f)
        n_images = next(iter(self._sums.values())).shape[1]
        out = []
        for i in range(n_images):
            aff = None
            if self._affinity is not None:
                aff = (self._affinity[i] / self._affinity_count).cpu().numpy()
            out.append(AttentionMaps(
                image_size=tuple(image_size),
                sums={hw[0]: s[:, i].cpu().numpy() for hw, s in self._sums.items()},
                counts={hw[0]: c.numpy().copy() for hw, c in self._counts.items()},
                bucket_edges=self.bucket_edges.copy(), affinity=aff, affinity_hw=self._affinity_hw))
        return out


@contextlib.contextmanager
def trace(pipe, prompt: str | Sequence[str], word: str | Sequence[str],
          config: CaptureConfig = CaptureConfig()) -> Iterator[AttentionTracer]:
    """Record the attention to ``word`` while ``pipe`` generates ``prompt`` inside the block."""
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    words = [word] * len(prompts) if isinstance(word, str) else list(word)
    if len(words) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(words)} class words")
    indices = [find_word_tokens(pipe.tokenizer, p, w) for p, w in zip(prompts, words)]
    tracer = AttentionTracer(pipe, indices, config).install()
    try:
        yield tracer
    finally:
        tracer.remove()
