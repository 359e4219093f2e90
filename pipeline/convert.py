"""Write a diffusers Stable Diffusion pipeline as one original-layout checkpoint file.

The layout is the CompVis/LDM one that A1111, ComfyUI and diffusers' ``from_single_file``
read (``model.diffusion_model.*``, ``first_stage_model.*``, ``cond_stage_model.transformer.*``).
It is the inverse of diffusers' ``convert_ldm_*_checkpoint`` for SD 1.x-style UNets with
any number of blocks and layers per block, so the project can test single-file loading on
models it builds itself, and users can take the embedded model to other tools.
"""
from __future__ import annotations

from pathlib import Path

import torch


def _unet_prefix_map(config) -> list[tuple[str, str]]:
    """(diffusers prefix, LDM prefix) pairs for the UNet."""
    lpb = config["layers_per_block"]
    n = len(config["block_out_channels"])
    down_attn = ["CrossAttn" in t for t in config["down_block_types"]]
    up_attn = ["CrossAttn" in t for t in config["up_block_types"]]
    pairs = [("time_embedding.linear_1.", "time_embed.0."), ("time_embedding.linear_2.", "time_embed.2."),
             ("conv_in.", "input_blocks.0.0."), ("conv_norm_out.", "out.0."), ("conv_out.", "out.2."),
             ("mid_block.attentions.0.", "middle_block.1."), ("mid_block.resnets.0.", "middle_block.0."),
             ("mid_block.resnets.1.", "middle_block.2.")]
    for i in range(n):
        for j in range(lpb):
            k = 1 + i * (lpb + 1) + j
            pairs.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{k}.0."))
            if down_attn[i]:
                pairs.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{k}.1."))
        if i < n - 1:
            pairs.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{(i + 1) * (lpb + 1)}.0.op."))
        for j in range(lpb + 1):
            k = i * (lpb + 1) + j
            pairs.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{k}.0."))
            if up_attn[i]:
                pairs.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{k}.1."))
        if i < n - 1:
            pairs.append((f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{i * (lpb + 1) + lpb}.{2 if up_attn[i] else 1}."))
    return pairs


_RESNET = [("norm1.", "in_layers.0."), ("conv1.", "in_layers.2."), ("norm2.", "out_layers.0."),
           ("conv2.", "out_layers.3."), ("time_emb_proj.", "emb_layers.1."), ("conv_shortcut.", "skip_connection.")]


def unet_to_ldm(state: dict, config) -> dict:
    pairs = sorted(_unet_prefix_map(config), key=lambda p: -len(p[0]))
    out = {}
    for key, value in state.items():
        for hf, sd in pairs:
            if key.startswith(hf):
                rest = key[len(hf):]
                if ".resnets." in hf or hf.startswith("mid_block.resnets"):
                    for a, b in _RESNET:
                        if rest.startswith(a):
                            rest = b + rest[len(a):]
                            break
                out["model.diffusion_model." + sd + rest] = value
                break
        else:
            raise KeyError(f"no LDM name for UNet weight {key}")
    return out


def vae_to_ldm(state: dict, config) -> dict:
    n = len(config["block_out_channels"])
    pairs = [("conv_norm_out.", "norm_out."), ("mid_block.attentions.0.", "mid.attn_1."),
             ("mid_block.resnets.0.", "mid.block_1."), ("mid_block.resnets.1.", "mid.block_2.")]
    for i in range(n):
        for j in range(config["layers_per_block"] + 1):
            pairs.append((f"encoder.down_blocks.{i}.resnets.{j}.", f"encoder.down.{i}.block.{j}."))
            pairs.append((f"decoder.up_blocks.{i}.resnets.{j}.", f"decoder.up.{n - 1 - i}.block.{j}."))
        pairs.append((f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample."))
        pairs.append((f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{n - 1 - i}.upsample."))
    for side in ("encoder", "decoder"):
        pairs += [(f"{side}.{a}", f"{side}.{b}") for a, b in pairs[:4]]
    pairs = sorted(pairs[4:], key=lambda p: -len(p[0]))
    attn = [("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."), ("to_out.0.", "proj_out.")]
    out = {}
    for key, value in state.items():
        new = key
        for hf, sd in pairs:
            if key.startswith(hf):
                new = sd + key[len(hf):]
                if ".resnets." in hf or "mid_block.resnets" in hf:
                    new = new.replace("conv_shortcut.", "nin_shortcut.")
                if "mid_block.attentions" in hf:
                    for a, b in attn:
                        new = new.replace(".attn_1." + a, ".attn_1." + b)
                    if value.ndim == 2:  # LDM's VAE attention uses 1x1 convolutions
                        value = value[:, :, None, None]
                break
        out["first_stage_model." + new] = value
    return out


def save_single_file(pipe, path: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write ``pipe`` (SD 1.x-style: UNet, AutoencoderKL, CLIPTextModel) as one .safetensors/.ckpt."""
    path = Path(path)
    sd = {}
    sd.update(unet_to_ldm(pipe.unet.state_dict(), pipe.unet.config))
    sd.update(vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config))
    # SD 1.x stores OpenAI CLIP as HF's CLIPTextModel under this prefix (with "text_model.",
    # which transformers 5 no longer puts in state_dict keys).
    sd.update({"cond_stage_model.transformer." + (k if k.startswith("text_model.") else "text_model." + k): v
               for k, v in pipe.text_encoder.state_dict().items()})
    sd = {k: (v.to(dtype) if dtype else v).contiguous() for k, v in sd.items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(path))
    else:
        torch.save({"state_dict": sd}, path)
    return path
