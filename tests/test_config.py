"""XAttentionConfig: validation with clear errors, thresholds tables, YAML round trip."""

import pytest

from xattn_video import XAttentionConfig


def test_yaml_round_trip(tmp_path):
    cfg = XAttentionConfig(block_size=64, stride=8, threshold={"default": 0.9, "layers": {3: 0.95},
                                                                 "heads": {5: [0.8, 0.99]}},
                           warmup_steps=3, dense_layers=(0, 1), max_density=0.3, mask_reuse_steps=2)
    cfg.save(tmp_path / "c.yaml")
    again = XAttentionConfig.load(tmp_path / "c.yaml")
    assert again == cfg
    assert again.threshold_for(3, 2) == 0.95
    assert again.threshold_for(5, 2) == [0.8, 0.99]
    assert again.threshold_for(0, 2) == 0.9
    with pytest.raises(ValueError, match="layer 5 has 2 per-head thresholds, the model has 24"):
        again.threshold_for(5, 24)


def test_nested_section_and_unknown_keys(tmp_path):
    (tmp_path / "a.yaml").write_text("xattention:\n  threshold: 0.8\n  stride: 8\n")
    assert XAttentionConfig.load(tmp_path / "a.yaml").threshold == 0.8
    (tmp_path / "b.yaml").write_text("treshold: 0.8\n")
    with pytest.raises(ValueError, match=r"unknown XAttention config key\(s\) \['treshold'\]"):
        XAttentionConfig.load(tmp_path / "b.yaml")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        XAttentionConfig.load(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"threshold": 0.0}, r"threshold=0.0 is out of range: a threshold must be a number in \(0, 1\]"),
        ({"threshold": {"default": 1.2}}, r"threshold.default=1.2 is out of range"),
        ({"threshold": {"heads": {1: [0.5, -1]}}}, r"threshold.heads\[1\]=-1 is out of range"),
        ({"block_size": 2}, "block_size=2 is out of range: accepted 4..512"),
        ({"stride": 7}, "stride=7 must be >= 1 and divide block_size=128"),
        ({"warmup_steps": -1}, "warmup_steps=-1 must be >= 0"),
        ({"max_density": 0}, r"max_density=0 is out of range: accepted \(0, 1\] or None"),
        ({"backend": "cuda"}, "backend='cuda' is not one of"),
        ({"dense_layers": (1, -2)}, "dense_layers=.* must be non-negative"),
        ({"mask_reuse_steps": 0}, "mask_reuse_steps=0 must be >= 1"),
    ],
)
def test_bad_values_name_the_value_and_the_range(kwargs, match):
    with pytest.raises(ValueError, match=match):
        XAttentionConfig(**kwargs)


def test_dense_everywhere():
    assert XAttentionConfig(threshold=1.0).is_dense_everywhere()
    assert not XAttentionConfig(threshold=1.0, max_density=0.5).is_dense_everywhere()
    assert not XAttentionConfig(threshold={"default": 1.0, "layers": {2: 0.9}}).is_dense_everywhere()
