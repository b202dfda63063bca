"""XAttentionConfig: validation with clear errors, thresholds tables, YAML round trip."""

import pytest

from xattn_video import OpConfig, ScheduleConfig, XAttentionConfig


def test_yaml_round_trip(tmp_path):
    cfg = XAttentionConfig(block_size=64, stride=8, threshold={"default": 0.9, "layers": {3: 0.95},
                                                                 "heads": {5: [0.8, 0.99]}},
                           warmup_steps=3, dense_layers=(0, 1), max_density=0.3, mask_reuse_steps=2,
                           dense_above=0.85, sink_aware=True)
    cfg.save(tmp_path / "c.yaml")
    again = XAttentionConfig.load(tmp_path / "c.yaml")
    assert again == cfg
    assert again.op.sink_aware is True and XAttentionConfig().op.sink_aware is False
    assert again.schedule.dense_above == 0.85 and XAttentionConfig().dense_above is None
    assert "dense_above: 0.85" in (tmp_path / "c.yaml").read_text().split("schedule:")[1]
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
        ({"sink_aware": "yes"}, "sink_aware='yes' must be true or false"),
        ({"dense_layers": (1, -2)}, "dense_layers=.* must be non-negative"),
        ({"mask_reuse_steps": 0}, "mask_reuse_steps=0 must be >= 1"),
        ({"dense_above": 1.0}, r"dense_above=1.0 is out of range: accepted \(0, 1\) or None \(off\)"),
        ({"dense_above": "high"}, r"dense_above='high' is out of range"),
    ],
)
def test_bad_values_name_the_value_and_the_range(kwargs, match):
    with pytest.raises(ValueError, match=match):
        XAttentionConfig(**kwargs)


def test_dense_everywhere():
    assert XAttentionConfig(threshold=1.0).is_dense_everywhere()
    assert not XAttentionConfig(threshold=1.0, max_density=0.5).is_dense_everywhere()
    assert not XAttentionConfig(threshold={"default": 1.0, "layers": {2: 0.9}}).is_dense_everywhere()


def test_op_and_schedule_are_separate_parts():
    cfg = XAttentionConfig(threshold=0.8, block_size=64, stride=8, warmup_steps=3, dense_layers=[1])
    assert cfg.op == OpConfig(threshold=0.8, block_size=64, stride=8)
    assert cfg.schedule == ScheduleConfig(warmup_steps=3, dense_layers=(1,))
    assert cfg == XAttentionConfig(op=cfg.op, schedule=cfg.schedule)
    assert cfg.threshold == 0.8 and cfg.warmup_steps == 3  # flat names read through
    assert cfg.replace(warmup_steps=0).op is cfg.op and cfg.replace(threshold=0.5).schedule is cfg.schedule
    with pytest.raises(ValueError, match=r"unknown XAttention config field\(s\) \['warmup'\]"):
        XAttentionConfig(warmup=3)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        cfg.nope


def test_sectioned_yaml_and_legacy_flat_files_load_the_same(tmp_path):
    cfg = XAttentionConfig(threshold=0.9, max_density=0.3, warmup_steps=5, mask_reuse_steps=2, unknown_step="sparse")
    cfg.save(tmp_path / "new.yaml")
    text = (tmp_path / "new.yaml").read_text()
    assert text.startswith("op:\n") and "\nschedule:\n" in text
    # a user file written for earlier versions: flat keys
    (tmp_path / "old.yaml").write_text("threshold: 0.9\nmax_density: 0.3\nwarmup_steps: 5\nmask_reuse_steps: 2\n"
                                       "unknown_step: sparse\nkeep_text: true\nbackend: auto\n")
    assert XAttentionConfig.load(tmp_path / "old.yaml") == XAttentionConfig.load(tmp_path / "new.yaml") == cfg
    (tmp_path / "mixed.yaml").write_text("op:\n  threshold: 0.9\nwarmup_steps: 1\n")
    assert XAttentionConfig.load(tmp_path / "mixed.yaml").warmup_steps == 1
    (tmp_path / "twice.yaml").write_text("op:\n  threshold: 0.9\nthreshold: 0.8\n")
    with pytest.raises(ValueError, match=r"\['threshold'\] given both flat and inside a section"):
        XAttentionConfig.load(tmp_path / "twice.yaml")
    (tmp_path / "wrong.yaml").write_text("schedule:\n  threshold: 0.9\n")
    with pytest.raises(ValueError, match=r"wrong.yaml.*unknown key\(s\) \['threshold'\] in config section 'schedule'"):
        XAttentionConfig.load(tmp_path / "wrong.yaml")


@pytest.mark.parametrize("kwargs,match", [
    ({"unknown_step": "skip"}, r"unknown_step='skip' is not one of \('dense', 'sparse', 'error'\)"),
    ({"fallback": "sparse"}, r"fallback='sparse' is not one of \('dense', 'error'\)"),
    ({"dense_layers": "0,1"}, "dense_layers='0,1' must be a list"),
])
def test_schedule_policies_validated(kwargs, match):
    with pytest.raises(ValueError, match=match):
        XAttentionConfig(**kwargs)


def test_exactness_per_layer():
    op = OpConfig(threshold={"default": 0.9, "layers": {2: 1.0}, "heads": {3: [1.0, 0.9]}})
    assert op.is_exact(2, 2) and not op.is_exact(0, 2) and not op.is_exact(3, 2) and not op.is_exact()
    assert not OpConfig(threshold=1.0, max_density=0.5).is_exact(0, 2)
