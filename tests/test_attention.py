"""Cross-attention capture on a real (tiny) diffusers pipeline."""
import numpy as np
import pytest
import torch

from pipeline.attention import CaptureConfig, WordNotInPromptError, trace
from pipeline.refine import capture_for
from pipeline.errors import PipelineError
from pipeline.generate import generate, to_uint8


class StoreEverything:
    """Reference processor (DAAM style): keeps the full attention probabilities of every call."""

    def __init__(self, store, name):
        self.store, self.name = store, name

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        from diffusers.models.attention_processor import AttnProcessor

        q = attn.head_to_batch_dim(attn.to_q(hidden_states))
        k = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        probs = attn.get_attention_scores(q, k, None)  # (batch*heads, N, L), plain softmax
        self.store.append(probs.view(-1, attn.heads, *probs.shape[1:]).detach().clone())
        return AttnProcessor()(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


def run_reference(pipe, prompt, seed, steps, guidance):
    store = []
    saved = dict(pipe.unet.attn_processors)
    procs = {n: (StoreEverything(store, n) if n.endswith("attn2.processor") else p) for n, p in saved.items()}
    pipe.unet.set_attn_processor(procs)
    try:
        pipe(prompt, num_inference_steps=steps, guidance_scale=guidance,
             generator=torch.Generator().manual_seed(seed), output_type="np")
    finally:
        pipe.unet.set_attn_processor(saved)
    return store


@pytest.mark.slow
def test_capture_does_not_change_pixels(tiny_pipe):
    plain = tiny_pipe("a photograph of a dog", num_inference_steps=4, guidance_scale=7.5,
                      generator=torch.Generator().manual_seed(11), output_type="np").images
    traced = generate(tiny_pipe, "dog", 11, steps=4, guidance=7.5)[0]
    assert np.array_equal(to_uint8(plain)[0], traced.image)
    # and the processors are restored afterwards
    assert not any(type(p).__name__ == "_Recorder" for p in tiny_pipe.unet.attn_processors.values())


@pytest.mark.slow
@pytest.mark.parametrize("word, guidance", [("dog", 7.5), ("aeroplane", 7.5), ("dog", 1.0)])
def test_running_sums_equal_full_storage_reference(tiny_pipe, word, guidance):
    """Conditional half only, class tokens only, summed over heads/layers/steps."""
    prompt = f"a photograph of a {word}"
    steps = 3
    store = run_reference(tiny_pipe, prompt, 5, steps, guidance)
    tokens = tiny_pipe.tokenizer(prompt).input_ids
    idx = list(range(5, len(tokens) - 1))  # the word's tokens sit between "a" and EOS
    expected = sum((p[-1] if guidance > 1 else p[0])[:, :, idx].sum(dim=(0, 2)) for p in store)
    with trace(tiny_pipe, prompt, word, CaptureConfig(self_attention_max_tokens=0)) as tr:
        tiny_pipe(prompt, num_inference_steps=steps, guidance_scale=guidance,
                  generator=torch.Generator().manual_seed(5), output_type="np")
    maps = tr.maps()[0]
    (res,) = maps.resolutions
    got = maps.sums[res].sum(0).reshape(-1)
    assert np.allclose(got, expected.numpy(), rtol=1e-4, atol=1e-5)
    n_layers = len(store) // steps
    heads = next(m.heads for n, m in tiny_pipe.unet.named_modules() if n.endswith('attn2'))
    assert maps.counts[res].sum() == len(store) * heads == steps * n_layers * heads


@pytest.mark.slow
def test_listeners_see_every_map_the_sums_add_up(tiny_pipe):
    """on_record hands out each call's maps (what a store-every-map tool such as DAAM keeps);
    they add up to the running sums, and the sums' size is state_bytes."""
    prompt, kept = "a photograph of a dog", []
    with trace(tiny_pipe, prompt, "dog", CaptureConfig(self_attention_max_tokens=0)) as tr:
        tr.on_record(lambda hw, maps: kept.append((hw, maps.clone())))
        tiny_pipe(prompt, num_inference_steps=2, generator=torch.Generator().manual_seed(1), output_type="np")
    maps = tr.maps()[0]
    (res,) = maps.resolutions
    assert len(kept) == 2 * len([n for n, _ in tiny_pipe.unet.named_modules() if n.endswith("attn2")])
    assert all(hw == (res, res) and m.shape == (1, res, res) for hw, m in kept)
    assert np.allclose(sum(m[0] for _, m in kept).numpy(), maps.sums[res].sum(0), rtol=1e-5, atol=1e-6)
    assert tr.state_bytes == maps.sums[res].size * 4  # float32 sums, one bucket row per time bucket


def _bytes_in_use() -> int:
    """Heap bytes allocated now (glibc's mallinfo2: small blocks + mmapped ones), which counts
    torch's CPU tensors, numpy arrays and Python objects alike; freed memory is not counted,
    unlike RSS, so the figure does not drift with the allocator's caching."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                   "fsmblks", "uordblks", "fordblks", "keepcost")]

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = MallInfo2
    except (OSError, AttributeError):
        pytest.skip("needs glibc >= 2.33 (mallinfo2) to read the heap's bytes in use")
    info = libc.mallinfo2()
    return info.uordblks + info.hblkhd


@pytest.mark.slow
def test_memory_does_not_grow_with_steps(tiny_pipe):
    """The recorder keeps running sums, not per-step maps: the heap in use after step 50 is the
    heap after step 10 (measured within one 50-step run with self-attention capture on; keeping
    one copy of the affinity per step would add 40 x its size, ~11 MB here)."""
    import gc

    in_use = {}

    def at_step(pipe, i, t, kwargs):
        if i + 1 in (10, 50):
            gc.collect()
            in_use[i + 1] = _bytes_in_use()
        return kwargs

    with trace(tiny_pipe, "a photograph of a cat", "cat", capture_for("affinity")) as tr:
        tiny_pipe("a photograph of a cat", num_inference_steps=50, output_type="np", callback_on_step_end=at_step)
    state = tr.state_bytes + tr._affinity.numel() * tr._affinity.element_size()
    assert state > 100_000  # the affinity is recorded, so a per-step copy would show
    assert in_use[50] - in_use[10] < state / 4, (in_use, state)


@pytest.mark.slow
def test_timestep_range_and_buckets(tiny_pipe):
    cfg = CaptureConfig(timestep_range=(0, 499), self_attention_max_tokens=0)
    with trace(tiny_pipe, "a photograph of a cat", "cat", cfg) as tr:
        tiny_pipe("a photograph of a cat", num_inference_steps=6, output_type="np")
    m = tr.maps()[0]
    counts = m.counts[m.resolutions[0]]
    centres = (m.bucket_edges[:-1] + m.bucket_edges[1:]) / 2
    assert counts[centres > 500].sum() == 0 and counts[centres < 500].sum() > 0
    with pytest.raises(PipelineError, match="no cross-attention"):
        with trace(tiny_pipe, "a photograph of a cat", "cat", CaptureConfig(timestep_range=(2000, 3000))) as tr2:
            tiny_pipe("a photograph of a cat", num_inference_steps=2, output_type="np")
        tr2.maps()


@pytest.mark.slow
def test_heat_map_shape_range_and_views(tiny_pipe):
    s = generate(tiny_pipe, "dog", 0, steps=3)[0]
    h = s.heat_map
    assert h.shape == s.image.shape[:2] and h.dtype == np.float32
    assert h.min() == 0.0 and h.max() == 1.0
    per_res = s.attention.resolution_heat_maps()
    assert set(per_res) == set(s.attention.resolutions)
    assert np.allclose(s.attention.heat_map(timesteps=(0, 999)), h)
    early = s.attention.heat_map(timesteps=(500, 999))
    assert early.shape == h.shape and not np.allclose(early, h)
    with pytest.raises(ValueError, match="captured"):
        s.attention.heat_map(resolutions=[3])


@pytest.mark.slow
def test_resolution_filter(tiny_pipe):
    with trace(tiny_pipe, "a photograph of a cat", "cat", CaptureConfig(resolutions=(99,))) as tr:
        tiny_pipe("a photograph of a cat", num_inference_steps=2, output_type="np")
    with pytest.raises(PipelineError, match="no cross-attention"):
        tr.maps()


@pytest.mark.slow
def test_batch_matches_single_generation(tiny_pipe):
    batch = generate(tiny_pipe, ["dog", "aeroplane"], [1, 2], steps=3)
    single = generate(tiny_pipe, "aeroplane", 2, steps=3)[0]
    assert np.abs(batch[1].image.astype(int) - single.image.astype(int)).max() <= 1
    assert np.allclose(batch[1].heat_map, single.heat_map, atol=1e-3)
    assert not np.allclose(batch[0].heat_map, batch[1].heat_map)


@pytest.mark.slow
def test_word_missing_from_prompt(tiny_pipe):
    with pytest.raises(WordNotInPromptError):
        generate(tiny_pipe, "dog", 0, steps=2, prompt="a photograph of a cat")
    # the failed trace must not leave recorders installed
    assert not any(type(p).__name__ == "_Recorder" for p in tiny_pipe.unet.attn_processors.values())


@pytest.mark.slow
def test_reused_projections_equal_recomputed_ones(tiny_pipe):
    """Capture reads q/k from the processor's own to_q/to_k calls; a processor that does not
    make them (fused projections) falls back to computing them: both give the same maps."""
    prompt = "a photograph of a cat"
    with trace(tiny_pipe, prompt, "cat") as tr:
        tiny_pipe(prompt, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np")
    assert tr._projection_hooks == []  # removed on exit
    reused = tr.maps()[0].heat_map()
    with trace(tiny_pipe, prompt, "cat") as tr2:
        for h in tr2._projection_hooks:  # as if the processor never called to_q/to_k
            h.remove()
        tiny_pipe(prompt, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np")
    assert np.allclose(tr2.maps()[0].heat_map(), reused, atol=1e-5)
