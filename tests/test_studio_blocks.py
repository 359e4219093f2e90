"""studio.console.StudioBlocks: a skipped output is answered as Gradio answers it, without
Gradio's rebuild of the skipped component; and the studio launches without Gradio's run history."""
import asyncio
import copy
import json
import urllib.request

import gradio as gr
import numpy as np
import pytest

from studio.console import StudioBlocks


def _app(cls, views=False):
    """A Blocks of the studio's output kinds; ``views``: only pictures and texts (the threshold
    step's kind of event), else a state, a text, a picture, an editor and a number."""
    with cls() as demo:
        state = gr.State()
        number = gr.Number(elem_id="n")
        text, image, editor = gr.Markdown(), gr.Image(type="numpy", format="png"), gr.ImageEditor(type="numpy")
        outputs = [text, image, gr.Image(type="numpy", format="png"), number] if views else \
            [state, text, image, editor, number]
        number.change(lambda x: x, number, outputs)
    return demo, demo.fns[0], outputs


ANSWERS = [  # what handlers return: every view, the unchanged ones as gr.skip()
    [gr.skip(), "**changed**", np.full((8, 8, 3), 200, np.uint8), gr.skip(), gr.skip()],
    [{"x": 1}, gr.skip(), gr.skip(), gr.skip(), gr.update(value=3, label="n")],
    [gr.skip()] * 5,
    [gr.skip(), gr.skip(), np.zeros((4, 4, 3), np.uint8), gr.skip(), gr.skip()],  # one output left
    [None, "text", None, None, 2],  # no skip at all
]


VIEW_ANSWERS = [  # pictures and texts only: postprocessed on the loop up to LOOP_PIXELS
    ["**a**", np.full((64, 64, 3), 9, np.uint8), np.zeros((8, 8, 3), np.uint8), 3],
    [gr.skip(), np.full((64, 64, 3), 7, np.uint8), gr.skip(), 4.5],
    ["b", np.full((200, 200, 3), 5, np.uint8), np.zeros((8, 8, 3), np.uint8), 1],  # a large picture: Gradio's threads
    ["c", None, gr.update(visible=False), 2],  # an update among them: Gradio's own path
]


@pytest.mark.parametrize("answer", range(len(ANSWERS) + len(VIEW_ANSWERS)))
def test_a_skipped_view_is_answered_as_gradio_answers_it(answer):
    views = answer >= len(ANSWERS)
    plain, plain_fn, _ = _app(gr.Blocks, views)
    ours, our_fn, our_outputs = _app(StudioBlocks, views)
    predictions = VIEW_ANSWERS[answer - len(ANSWERS)] if views else ANSWERS[answer]
    # deep copies: Gradio pops keys out of an update dict it is given
    want = asyncio.run(plain.postprocess_data(plain_fn, copy.deepcopy(predictions), None))
    got = asyncio.run(ours.postprocess_data(our_fn, copy.deepcopy(predictions), None))
    norm = lambda xs: json.loads(json.dumps(xs, default=str).replace(str(plain_fn.outputs[0]._id), "S"))
    assert len(got) == len(want) == len(our_outputs)
    for g, w in zip(got, want):
        if isinstance(w, dict) and "path" in w:  # a picture: same bytes, cached under the same hash
            assert g["path"].split("/")[-2:] == w["path"].split("/")[-2:]
        else:
            assert norm(g) == norm(w)


def test_a_skip_rebuilds_nothing(monkeypatch):
    ours, our_fn, _ = _app(StudioBlocks)
    built = []
    original = gr.ImageEditor.__init__

    def counting(self, *a, **k):
        built.append(1)
        original(self, *a, **k)

    monkeypatch.setattr(gr.ImageEditor, "__init__", counting)
    asyncio.run(ours.postprocess_data(our_fn, [gr.skip(), "a", gr.skip(), gr.skip(), gr.skip()], None))
    assert built == []
    plain, plain_fn, _ = _app(gr.Blocks)  # the rebuild this saves (so this test can fail)
    built.clear()
    asyncio.run(plain.postprocess_data(plain_fn, [gr.skip(), "a", gr.skip(), gr.skip(), gr.skip()], None))
    assert built  # Gradio 6.31 rebuilt the skipped editor


def test_small_views_are_answered_without_a_worker_thread(monkeypatch):
    """Pictures up to LOOP_PIXELS and texts are postprocessed on the loop (Gradio hops to a
    worker thread per output: most of a threshold step's server time on 2 cores); a large
    picture still goes to Gradio's threads."""
    import anyio

    hops = []
    original = anyio.to_thread.run_sync

    async def counting(fn, *args, **kwargs):
        hops.append(getattr(fn, "__qualname__", fn))
        return await original(fn, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counting)
    for cls, answer, want in ((StudioBlocks, 0, 0), (gr.Blocks, 0, 4), (StudioBlocks, 2, 4)):
        demo, fn, _ = _app(cls, views=True)
        hops.clear()
        asyncio.run(demo.postprocess_data(fn, copy.deepcopy(VIEW_ANSWERS[answer]), None))
        assert sum("postprocess" in str(h) for h in hops) == want, (cls.__name__, answer, hops)


@pytest.mark.slow
def test_the_studio_keeps_no_run_history_in_the_browser(tmp_path):
    from studio_server import running_studio

    with running_studio(tmp_path / "data") as url:
        config = json.loads(urllib.request.urlopen(f"{url}config").read())
    assert config["run_history"] is False  # a stored run loaded back would show what no session holds
    assert "runs" not in config.get("footer_links", [])
