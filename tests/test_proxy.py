"""The proxy model's parts: procedural data, the caption-following check, the model folder, training,
and the oracle attention concentration."""

import numpy as np
import pytest
import torch

from xattn_video.oracle import blocks_for_mass, oracle_block_density, oracle_block_mass
from xattn_video.proxy.data import (COLOURS, DIRECTIONS, HELD_OUT, SHAPES, all_combinations, caption,
                                    caption_split, parse_caption, render, sample_specs)
from xattn_video.proxy.follow import colour_centroids, follow_rate, follows_caption


def _frames(video: torch.Tensor) -> list[np.ndarray]:
    """[B, 3, F, H, W] in -1..1 -> list of [F, H, W, 3] in 0..1."""
    return list(((video.permute(0, 2, 3, 4, 1) + 1) / 2).numpy())


# -- data ------------------------------------------------------------------------------------------------

def test_caption_vocabulary_holds_the_required_words():
    assert {"red", "green", "blue", "yellow", "white"} <= set(COLOURS)
    assert {"circle", "square", "triangle"} <= set(SHAPES)
    assert set(DIRECTIONS) == {"left", "right", "up", "down"}
    assert parse_caption("a red circle moving right") == ("red", "circle", "right")
    with pytest.raises(ValueError, match="'purple'"):
        parse_caption("a purple circle moving right")
    with pytest.raises(ValueError, match="not of the form"):
        parse_caption("red circle right")


def test_held_out_combinations_are_new_but_their_words_are_not():
    train, held = caption_split()
    assert len(held) == HELD_OUT >= 32 and len(set(held)) == len(held)
    assert not set(train) & set(held)
    assert len(train) + len(held) == len(all_combinations())
    seen = [parse_caption(c) for c in train]
    for c in held:
        colour, shape, direction = parse_caption(c)
        assert any(s[0] == colour for s in seen) and any(s[1] == shape for s in seen)
        assert any(s[2] == direction for s in seen)
    assert caption_split() == (train, held), "the split is deterministic"


def test_render_is_deterministic_in_range_and_size_independent_in_motion():
    train, _ = caption_split()
    a = render(sample_specs(train, 6, torch.Generator().manual_seed(3)), 9, 32, 32)
    b = render(sample_specs(train, 6, torch.Generator().manual_seed(3)), 9, 32, 32)
    c = render(sample_specs(train, 6, torch.Generator().manual_seed(4)), 9, 32, 32)
    assert a.shape == (6, 3, 9, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= -1 and a.max() <= 1
    spec = sample_specs(train, 4, torch.Generator().manual_seed(5))
    small, large = _frames(render(spec, 9, 32, 32)), _frames(render(spec, 17, 64, 64))
    for s, l, text in zip(small, large, spec.captions):
        colour = parse_caption(text)[0]
        first_s, last_s = colour_centroids(s, colour)[0], colour_centroids(s, colour)[-1]
        first_l, last_l = colour_centroids(l, colour)[0], colour_centroids(l, colour)[-1]
        assert np.allclose(first_s, first_l, atol=0.05) and np.allclose(last_s, last_l, atol=0.05)


def test_distractors_never_take_a_caption_colour():
    from xattn_video.proxy.data import DISTRACTOR_COLOURS
    from xattn_video.proxy.follow import COLOUR_TOLERANCE

    for d in DISTRACTOR_COLOURS:
        for c in COLOURS.values():
            assert max(abs(x - y) for x, y in zip(d, c)) > COLOUR_TOLERANCE + 0.1


# -- the caption-following check -------------------------------------------------------------------------

def test_rendered_videos_follow_their_captions_and_not_others():
    train, held = caption_split()
    spec = sample_specs(train + held, 40, torch.Generator().manual_seed(1))
    videos = _frames(render(spec, 9, 32, 32))
    assert follow_rate(videos, spec.captions) == 1.0
    flip = {"left": "right", "right": "left", "up": "down", "down": "up"}
    wrong_way = [caption(c, s, flip[d]) for c, s, d in map(parse_caption, spec.captions)]
    assert follow_rate(videos, wrong_way) == 0.0


def test_noise_and_static_videos_do_not_follow():
    rng = np.random.default_rng(0)
    assert not follows_caption(rng.random((9, 32, 32, 3)), "a red circle moving right").followed
    train, _ = caption_split()
    spec = sample_specs(["a red circle moving right"], 1, torch.Generator().manual_seed(0))
    still = np.repeat(_frames(render(spec, 9, 32, 32))[0][:1], 9, axis=0)  # the first frame, held
    result = follows_caption(still, "a red circle moving right")
    assert not result.followed and abs(result.along) < 1e-6
    with pytest.raises(ValueError, match="one caption per video"):
        follow_rate([still], [])


# -- oracle concentration --------------------------------------------------------------------------------

@pytest.mark.parametrize("n,block,kv", [(300, 32, (300, 250)), (129, 16, (129, 7))])
def test_oracle_block_mass_matches_the_full_softmax(n, block, kv):
    torch.manual_seed(0)
    q, k = torch.randn(2, 3, n, 16), torch.randn(2, 3, n, 16)
    kv_len = torch.tensor(kv)
    got = oracle_block_mass(q, k, block, kv_len, chunk=50)
    logits = q @ k.transpose(-1, -2) / 4 + torch.where(torch.arange(n)[None] < kv_len[:, None], 0.0,
                                                       float("-inf"))[:, None, None]
    p = torch.softmax(logits, -1)
    nb = -(-n // block)
    pad = nb * block - n
    per_key_block = torch.nn.functional.pad(p, (0, pad)).unflatten(-1, (nb, block)).sum(-1)
    rows = torch.arange(n) // block
    want = torch.zeros(2, 3, nb, nb).index_add_(2, rows, per_key_block) / torch.bincount(rows)[:, None]
    assert torch.allclose(got, want, atol=1e-5)
    assert torch.allclose(got.sum(-1), torch.ones(2, 3, nb), atol=1e-5)


def test_blocks_for_mass_and_density_extremes():
    mass = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    assert blocks_for_mass(mass, 0.5).tolist() == [1]
    assert blocks_for_mass(mass, 0.8).tolist() == [2]
    assert blocks_for_mass(mass, 0.9).tolist() == [3]
    torch.manual_seed(0)
    q = torch.randn(1, 2, 256, 16)
    uniform = oracle_block_density(q * 0, q * 0, 32, 0.9)  # 8 blocks of mass 1/8: 7 hold 0.875 < 0.9
    assert torch.equal(uniform, torch.ones(1, 2))
    unit = torch.nn.functional.normalize(q, dim=-1) * 30
    peaked = oracle_block_density(unit, unit, 32, 0.9)  # each query attends itself: one block
    assert torch.allclose(peaked, torch.full((1, 2), 1 / 8))


# -- model folder and training ---------------------------------------------------------------------------

def _toy_pipe(seed: int = 0):
    from xattn_video.proxy.model import ProxySize, proxy_components, proxy_pipeline

    return proxy_pipeline(proxy_components(seed, ProxySize(heads=2, head_dim=32, double_blocks=1, single_blocks=1)))


TOY_CALL = {"num_frames": 5, "height": 16, "width": 16, "num_inference_steps": 2}


def _generate(pipe, prompt: str, seed: int = 0) -> np.ndarray:
    from xattn_video.proxy.model import proxy_call_kwargs

    pipe.set_progress_bar_config(disable=True)
    return pipe(prompt=prompt, generator=torch.Generator().manual_seed(seed), output_type="np", **TOY_CALL,
                **proxy_call_kwargs(pipe)).frames[0]


def test_proxy_folder_round_trip_gives_the_same_video(tmp_path):
    from xattn_video.proxy.model import is_proxy_folder, load_proxy, read_info, save_proxy

    pipe = _toy_pipe()
    before = _generate(pipe, "a red circle moving right")
    save_proxy(pipe, tmp_path / "proxy", half=False)
    assert is_proxy_folder(tmp_path / "proxy")
    for sub in ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"):
        assert (tmp_path / "proxy" / sub).is_dir()
    loaded = load_proxy(tmp_path / "proxy")
    assert read_info(tmp_path / "proxy").provenance.startswith("a small HunyuanVideoTransformer3DModel trained")
    np.testing.assert_array_equal(_generate(loaded, "a red circle moving right"), before)
    assert not np.array_equal(_generate(loaded, "a blue square moving up"), before), "the caption matters"


def test_deepened_proxy_makes_the_same_video_and_saves_its_depth(tmp_path):
    from xattn_video.proxy.model import deepen, load_proxy, save_proxy

    pipe = _toy_pipe()
    before = _generate(pipe, "a red circle moving right")
    deepen(pipe.transformer, 2)
    assert len(pipe.transformer.single_transformer_blocks) == pipe.transformer.config.num_single_layers == 3
    new = pipe.transformer.single_transformer_blocks[1]
    assert new is not pipe.transformer.single_transformer_blocks[0] and not new.proj_out.weight.any()
    np.testing.assert_array_equal(_generate(pipe, "a red circle moving right"), before)
    with torch.no_grad():  # once training moves a new block, the function changes
        new.proj_out.weight.normal_(0.0, 0.05)
    assert not np.array_equal(_generate(pipe, "a red circle moving right"), before)
    save_proxy(pipe, tmp_path / "deep", half=False)
    assert load_proxy(tmp_path / "deep").transformer.config.num_single_layers == 3
    with pytest.raises(ValueError, match="extra_single_blocks=0 is out of range"):
        deepen(pipe.transformer, 0)


def test_half_precision_folder_is_close(tmp_path):
    from xattn_video.proxy.model import load_proxy, save_proxy

    pipe = _toy_pipe()
    save_proxy(pipe, tmp_path / "half", half=True)
    sd = load_proxy(tmp_path / "half").transformer.state_dict()
    for name, p in pipe.transformer.state_dict().items():
        assert torch.allclose(sd[name], p, rtol=1e-3, atol=1e-4), name
    assert pipe.transformer.dtype == torch.float32, "saving in half leaves the live model as it was"


def test_training_lowers_the_loss_on_a_fixed_batch():
    from xattn_video.proxy.train import Stage, train_proxy

    pipe = _toy_pipe()
    captions = ["a red circle moving right"]  # one caption, one batch: the loss must fall
    log = train_proxy(pipe, [Stage(frames=5, height=16, width=16, batch=2, steps=30, lr=2e-3)], seed=0,
                      captions=captions, log_every=10, progress=None, warmup_steps=5)
    assert len(log.losses) == 3 and log.losses[-1] < 0.7 * log.losses[0]
    assert not pipe.transformer.training and not any(p.requires_grad for p in pipe.transformer.parameters())


def test_stage_needs_a_length():
    from xattn_video.proxy.train import Stage

    with pytest.raises(ValueError, match="steps or seconds"):
        Stage(frames=5, height=16, width=16, batch=2)
