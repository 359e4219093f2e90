"""Train the embedded text-to-image model on the procedural world (CPU, about an hour).

Three stages, all resumable from ``<out>/_train/`` (kill it, run the same command again):

1. an ``AutoencoderKL`` (64x64 RGB <-> 16x16x4 latents), MSE + a small KL term;
2. a ``UNet2DConditionModel`` with self- and cross-attention plus a small ``CLIPTextModel``
   (SD's real CLIP tokenizer), trained jointly on epsilon prediction with min-SNR
   weighting, 10 % caption dropout for classifier-free guidance, and an EMA of the weights;
3. attention alignment: a short fine-tune that adds a loss pulling the class word's
   cross-attention toward the object's exact mask (see ``align_attention``). Without it
   this small model draws the right objects but its attention maps localise poorly
   (mIoU about 0.45 even at the best threshold), which would make it a useless stand-in.

The result is an ordinary diffusers ``StableDiffusionPipeline`` folder (fp16 safetensors),
so the loader and attention capture used for real Stable Diffusion run on it unchanged.
"""
from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import world

TOKENIZER_DIR = Path(__file__).resolve().parents[2] / "assets" / "clip_tokenizer"


@dataclass
class TrainConfig:
    out: str = "assets/embedded_model"
    seed: int = 0
    image_size: int = 64
    vae_steps: int = 700
    vae_batch: int = 32
    vae_lr: float = 1e-3
    n_train_images: int = 24000
    unet_steps: int = 2500
    unet_batch: int = 64
    unet_lr: float = 4e-4
    warmup: int = 150
    caption_dropout: float = 0.1
    min_snr_gamma: float = 5.0
    ema_decay: float = 0.998
    text_max_length: int = 24
    align_steps: int = 600  # stage 3: attention alignment (0 skips it)
    align_lr: float = 1e-4
    align_weight: float = 1.0
    checkpoint_every: int = 100
    threads: int = 0  # 0: torch's default


def mark_float32(folder: Path) -> None:
    """Weights stay float16 on disk (size), but the configs say float32: transformers 5
    loads a model in its config's dtype by default, and a float16 text encoder beside a
    float32 UNet breaks a stock ``StableDiffusionPipeline.from_pretrained(folder)`` on CPU."""
    for config in Path(folder).glob("*/config.json"):
        data = json.loads(config.read_text())
        for key in ("dtype", "torch_dtype"):
            if key in data:
                data[key] = "float32"
        config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def build_components(cfg: TrainConfig):
    """Fresh (untrained) vae, unet, text encoder, tokenizer, noise scheduler."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=cfg.image_size,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=16)
    latent = cfg.image_size // 4
    unet = UNet2DConditionModel(
        sample_size=latent, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(64, 128, 128),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=64, attention_head_dim=8, norm_num_groups=32)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=cfg.text_max_length,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407))
    tokenizer = CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), model_max_length=cfg.text_max_length)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", prediction_type="epsilon")
    return vae, unet, text_encoder, tokenizer, scheduler


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).mul(2).sub(1).contiguous()


def _lr_at(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _save_state(path: Path, **state) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # atomic: a kill mid-save leaves the previous checkpoint intact


def train_vae(cfg: TrainConfig, vae, work: Path) -> None:
    state_path = work / "vae.pt"
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr)
    step = 0
    if state_path.exists():
        st = torch.load(state_path, weights_only=True)  # a crafted checkpoint must not run code
        vae.load_state_dict(st["vae"]), opt.load_state_dict(st["opt"])
        step = st["step"]
    rng = np.random.default_rng([cfg.seed, 1, step])
    vae.train()
    bar = tqdm(total=cfg.vae_steps, initial=step, desc="vae", unit="step")
    while step < cfg.vae_steps:
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, cfg.vae_steps, cfg.vae_lr, 50)
        x = _to_tensor(world.sample_batch(rng, cfg.vae_batch, cfg.image_size).images)
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x) + 1e-6 * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % cfg.checkpoint_every == 0 or step == cfg.vae_steps:
            _save_state(state_path, vae=vae.state_dict(), opt=opt.state_dict(), step=step)
    bar.close()
    vae.eval()


@torch.no_grad()
def encode_dataset(cfg: TrainConfig, vae, tokenizer, work: Path) -> dict[str, torch.Tensor]:
    """Latents (scaled posterior means) and token ids of the fixed training set, cached."""
    cache = work / "dataset.pt"
    if cache.exists():
        return torch.load(cache, weights_only=True)
    rng = np.random.default_rng([cfg.seed, 2])
    latents, labels, bgs = [], [], []
    for start in tqdm(range(0, cfg.n_train_images, 512), desc="encode", unit="batch"):
        b = world.sample_batch(rng, min(512, cfg.n_train_images - start), cfg.image_size)
        latents.append(vae.encode(_to_tensor(b.images)).latent_dist.mean)
        labels.append(torch.from_numpy(b.labels)), bgs.append(torch.from_numpy(b.backgrounds))
    latents = torch.cat(latents)
    scaling = float(1.0 / latents.std())

    def ids(texts):
        return tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids

    plain = ids([world.caption(c) for c in world.CLASS_NAMES])
    with_bg = ids([world.caption(c, b) for c in world.CLASS_NAMES for b in range(len(world.BACKGROUNDS))])
    data = {"latents": latents * scaling, "scaling": torch.tensor(scaling), "labels": torch.cat(labels),
            "backgrounds": torch.cat(bgs), "ids_plain": plain, "ids_bg": with_bg, "ids_empty": ids([""])}
    torch.save(data, cache)
    return data


def _batch(cfg: TrainConfig, data, scheduler, gen: torch.Generator):
    """One training batch: (indices, clean latents, labels, token ids, dropped-caption flags,
    noise, timesteps). Half the captions name the background; ``caption_dropout`` are empty."""
    n_bg = len(world.BACKGROUNDS)
    idx = torch.randint(0, len(data["latents"]), (cfg.unet_batch,), generator=gen)
    x0, lab, bg = data["latents"][idx], data["labels"][idx], data["backgrounds"][idx]
    use_bg = torch.rand(cfg.unet_batch, generator=gen) < 0.5
    ids = torch.where(use_bg[:, None], data["ids_bg"][lab * n_bg + bg], data["ids_plain"][lab])
    drop = torch.rand(cfg.unet_batch, generator=gen) < cfg.caption_dropout
    ids = torch.where(drop[:, None], data["ids_empty"].expand_as(ids), ids)
    noise = torch.randn(x0.shape, generator=gen)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (cfg.unet_batch,), generator=gen)
    return idx, x0, lab, ids, drop, noise, t


def _resume(state_path: Path, unet, text_encoder, lr: float):
    """(params, optimizer, EMA copy, step) for a UNet + text-encoder stage, from its checkpoint if any."""
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    ema, step = [p.detach().clone() for p in params], 0
    if state_path.exists():
        st = torch.load(state_path, weights_only=True)  # a crafted checkpoint must not run code
        unet.load_state_dict(st["unet"]), text_encoder.load_state_dict(st["text_encoder"])
        opt.load_state_dict(st["opt"])
        ema, step = st["ema"], st["step"]
    return params, opt, ema, step


@torch.no_grad()
def _use_ema(ema, params, unet, text_encoder) -> None:
    """End of a stage: the EMA weights become the model's."""
    for e, p in zip(ema, params):
        p.copy_(e)
    unet.eval(), text_encoder.eval()


def train_unet(cfg: TrainConfig, unet, text_encoder, scheduler, data, work: Path):
    state_path = work / "unet.pt"
    params, opt, ema, step = _resume(state_path, unet, text_encoder, cfg.unet_lr)
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + step)
    alphas = scheduler.alphas_cumprod
    snr = alphas / (1 - alphas)
    unet.train(), text_encoder.train()
    bar = tqdm(total=cfg.unet_steps, initial=step, desc="unet", unit="step")
    while step < cfg.unet_steps:
        lr = _lr_at(step, cfg.unet_steps, cfg.unet_lr, cfg.warmup)
        for g in opt.param_groups:
            g["lr"] = lr
        idx, x0, lab, ids, drop, noise, t = _batch(cfg, data, scheduler, gen)
        xt = scheduler.add_noise(x0, noise, t)
        cond = text_encoder(ids)[0]
        pred = unet(xt, t, cond).sample
        # min-SNR-gamma weighting (Hang et al. 2023): faster convergence for epsilon targets.
        w = torch.clamp(snr[t], max=cfg.min_snr_gamma) / snr[t]
        loss = (w * (pred - noise).pow(2).mean(dim=(1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema, params):
                e.lerp_(p.detach(), 1 - decay)
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.1e}")
        if step % cfg.checkpoint_every == 0 or step == cfg.unet_steps:
            _save_state(state_path, unet=unet.state_dict(), text_encoder=text_encoder.state_dict(),
                        opt=opt.state_dict(), ema=ema, step=step)
    bar.close()
    _use_ema(ema, params, unet, text_encoder)


class _AlignedCrossAttention:
    """Plain softmax cross-attention (the math of diffusers' AttnProcessor) that also keeps
    the attention probabilities, with gradients, for the alignment loss."""

    def __init__(self, kept: list):
        self.kept = kept

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        residual = hidden_states
        q = attn.head_to_batch_dim(attn.to_q(hidden_states))
        ctx = encoder_hidden_states
        if attn.norm_cross:
            ctx = attn.norm_encoder_hidden_states(ctx)
        k, v = attn.head_to_batch_dim(attn.to_k(ctx)), attn.head_to_batch_dim(attn.to_v(ctx))
        probs = attn.get_attention_scores(q, k, None)  # (b * heads, N, L)
        self.kept.append(probs.view(hidden_states.shape[0], attn.heads, *probs.shape[1:]))
        out = attn.to_out[1](attn.to_out[0](attn.batch_to_head_dim(torch.bmm(probs, v))))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


@torch.no_grad()
def object_masks(cfg: TrainConfig, work: Path) -> torch.Tensor:
    """(n_train_images, 16, 16) object coverage of each latent pixel, regenerated from the
    same random streams as ``encode_dataset`` (the world is deterministic), cached."""
    cache = work / "masks.pt"
    if cache.exists():
        return torch.load(cache, weights_only=True)
    rng = np.random.default_rng([cfg.seed, 2])
    out = []
    for start in tqdm(range(0, cfg.n_train_images, 512), desc="masks", unit="batch"):
        b = world.sample_batch(rng, min(512, cfg.n_train_images - start), cfg.image_size)
        m = torch.from_numpy(b.masks.astype(np.float32))[:, None]
        out.append(F.avg_pool2d(m, 4)[:, 0])  # the VAE downsamples by 4: 64x64 -> 16x16 latents
    masks = torch.cat(out)
    torch.save(masks, cache)
    return masks


def align_attention(cfg: TrainConfig, unet, text_encoder, tokenizer, scheduler, data, masks, work: Path):
    """Stage 3: fine-tune so the class word's cross-attention covers the object.

    Loss = diffusion loss + align_weight * mean((attention to the class word - object
    coverage)^2) over every cross-attention layer, head and pixel. The training images come
    with exact masks, so this teaches the small model what Stable Diffusion learns from
    scale: to attend with the object's word where the object is. (Disclosed in the model card.)
    """
    from ..attention import find_word_tokens

    if cfg.align_steps <= 0:
        return
    state_path = work / "align.pt"
    params, opt, ema, step = _resume(state_path, unet, text_encoder, cfg.align_lr)
    word_sel = torch.zeros(len(world.CLASS_NAMES), tokenizer.model_max_length)
    for k, name in enumerate(world.CLASS_NAMES):
        word_sel[k, find_word_tokens(tokenizer, world.caption(name), name)] = 1.0
    kept: list = []
    saved = dict(unet.attn_processors)
    unet.set_attn_processor({n: (_AlignedCrossAttention(kept) if n.endswith("attn2.processor") else p)
                             for n, p in saved.items()})
    gen = torch.Generator().manual_seed(cfg.seed * 7919 + step)
    alphas = scheduler.alphas_cumprod
    snr = alphas / (1 - alphas)
    unet.train(), text_encoder.train()
    bar = tqdm(total=cfg.align_steps, initial=step, desc="align", unit="step")
    try:
        while step < cfg.align_steps:
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, cfg.align_steps, cfg.align_lr, 20)
            idx, x0, lab, ids, drop, noise, t = _batch(cfg, data, scheduler, gen)
            kept.clear()
            pred = unet(scheduler.add_noise(x0, noise, t), t, text_encoder(ids)[0]).sample
            w = torch.clamp(snr[t], max=cfg.min_snr_gamma) / snr[t]
            diff_loss = (w * (pred - noise).pow(2).mean(dim=(1, 2, 3))).mean()
            keep = ~drop
            sel = word_sel[lab]
            cover = masks[idx][:, None]  # (b, 1, 16, 16)
            align = 0.0
            for probs in kept:  # (b, heads, N, L)
                side = int(round(probs.shape[2] ** 0.5))
                target = F.adaptive_avg_pool2d(cover, side).flatten(1)  # (b, N)
                word = torch.einsum("bhnl,bl->bhn", probs, sel)
                align = align + ((word - target[:, None]) ** 2).mean(dim=(1, 2))[keep].mean()
            align = align / max(1, len(kept))
            loss = diff_loss + cfg.align_weight * align
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            step += 1
            with torch.no_grad():
                for e, p in zip(ema, params):
                    e.lerp_(p.detach(), 1 - min(0.995, (1 + step) / (10 + step)))
            bar.update(1)
            bar.set_postfix(diff=f"{diff_loss.item():.4f}", align=f"{float(align):.4f}")
            if step % cfg.checkpoint_every == 0 or step == cfg.align_steps:
                _save_state(state_path, unet=unet.state_dict(), text_encoder=text_encoder.state_dict(),
                            opt=opt.state_dict(), ema=ema, step=step)
    finally:
        unet.set_attn_processor(saved)
        bar.close()
    _use_ema(ema, params, unet, text_encoder)


def save_pipeline(cfg: TrainConfig, vae, unet, text_encoder, tokenizer, scaling: float, out: Path) -> Path:
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    vae.register_to_config(scaling_factor=scaling)
    sched = DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                          beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
                          steps_offset=1, prediction_type="epsilon")
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=sched, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.to(torch.float16).save_pretrained(tmp, safe_serialization=True)  # fp16: ~20 MB in all
    mark_float32(tmp)
    (tmp / "training_config.json").write_text(json.dumps(asdict(cfg), indent=1))
    for name in ("README.md",):  # keep a hand-written model card across re-training
        if (out / name).exists():
            shutil.copy2(out / name, tmp / name)
    if (out / "_train").exists():
        shutil.move(str(out / "_train"), str(tmp / "_train"))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def train(cfg: TrainConfig) -> Path:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    work = out / "_train"
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    vae, unet, text_encoder, tokenizer, scheduler = build_components(cfg)
    train_vae(cfg, vae, work)
    data = encode_dataset(cfg, vae, tokenizer, work)
    train_unet(cfg, unet, text_encoder, scheduler, data, work)
    if cfg.align_steps > 0:
        align_attention(cfg, unet, text_encoder, tokenizer, scheduler, data, object_masks(cfg, work), work)
    save_pipeline(cfg, vae, unet, text_encoder, tokenizer, float(data["scaling"]), out)
    print(f"trained in {(time.time() - t0) / 60:.1f} min -> {out}")
    return out
