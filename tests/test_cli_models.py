"""Local diffusers folders of Wan 2.1, Wan 2.2 (two experts) and HunyuanVideo 1.5 through ``load_pipeline`` and the
CLI: tiny random-weight pipelines of diffusers' own classes (byte-level tokenizers built in code, nothing
downloaded), saved with ``save_pretrained``, loaded back, generated and compared with XAttention; and the one-line
errors for a wrong class, a missing subfolder and a bad video size."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from xattn_video.cli import main
from xattn_video.pipelines.hunyuan_video import load_pipeline, timed_generate
from xattn_video.pipelines.tiny import byte_tokenizer
from xattn_video.report import GenerateSummary
from xattn_video.video_io import read_mp4

# 9 frames x 128 x 128 pixels: 3 x 8 x 8 = 192 video tokens (both models), 6 blocks of tiny_cpu's 32; step 0 dense
SIZE = ["--frames", "9", "--height", "128", "--width", "128", "--steps", "2", "--warmup", "1", "--config", "tiny_cpu"]


def _peaked(model: torch.nn.Module) -> torch.nn.Module:
    """Raised QK-norm gains: peaked, position-dependent attention, as in a trained model (see tests/test_models)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(k in name for k in ("norm_q.", "norm_k.", "norm_added_q.", "norm_added_k.")):
                p.fill_(4.0)
    return model.eval()


def tiny_wan_pipeline(two_experts: bool = False):
    """A ``WanPipeline``: Wan 2.1, or Wan 2.2 with a low-noise expert (``transformer_2``) below ``boundary_ratio``."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    tokenizer = byte_tokenizer()

    def transformer(seed: int) -> WanTransformer3DModel:
        torch.manual_seed(seed)
        return _peaked(WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
            text_dim=24, freq_dim=16, ffn_dim=32, num_layers=2, rope_max_seq_len=32))

    torch.manual_seed(10)
    vae = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True], latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
    text_encoder = UMT5EncoderModel(UMT5Config(
        vocab_size=len(tokenizer), d_model=24, d_kv=8, d_ff=32, num_layers=1, num_heads=3,
        relative_attention_num_buckets=8, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id))
    return WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder.eval(), vae=vae,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), transformer=transformer(0),
                       transformer_2=transformer(1) if two_experts else None,
                       boundary_ratio=0.9 if two_experts else None)


def tiny_hunyuan15_pipeline():
    """A ``HunyuanVideo15Pipeline``: Qwen2.5-VL text model with a byte-level tokenizer and a chat template, ByT5
    (its tokenizer needs no files), T5 encoder, the 1.5 VAE (16x16 pixels, 4 frames) and a CFG guider. The
    template's system part is 108 tokens (<|user|>, 106 bytes, <|end|>): what the pipeline crops
    (``prompt_template_encode_start_idx``), as with Qwen's own template, so the text left is the prompt's."""
    from diffusers import (AutoencoderKLHunyuanVideo15, FlowMatchEulerDiscreteScheduler, HunyuanVideo15Pipeline,
                           HunyuanVideo15Transformer3DModel)
    from diffusers.guiders import ClassifierFreeGuidance
    from transformers import ByT5Tokenizer, Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel, T5Config, T5EncoderModel

    tokenizer = byte_tokenizer()
    tokenizer.chat_template = ("{% for m in messages %}<|user|>{{ m['content'][:106] if m['role'] == 'system' "
                               "else m['content'] }}<|end|>{% endfor %}")
    tokenizer_2 = ByT5Tokenizer()
    torch.manual_seed(0)
    transformer = _peaked(HunyuanVideo15Transformer3DModel(
        in_channels=9, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=2,
        num_refiner_layers=1, mlp_ratio=2.0, patch_size=1, patch_size_t=1, text_embed_dim=32, text_embed_2_dim=16,
        image_embed_dim=12, rope_axes_dim=(4, 6, 6)))
    vae = AutoencoderKLHunyuanVideo15(in_channels=3, out_channels=3, latent_channels=4,
                                      block_out_channels=(8, 8, 8, 8, 8), layers_per_block=1)
    text_encoder = Qwen2_5_VLTextModel(Qwen2_5_VLTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=2048, rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id))
    text_encoder_2 = T5EncoderModel(T5Config(vocab_size=len(tokenizer_2), d_model=16, d_kv=8, d_ff=32, num_layers=1,
                                             num_heads=2, decoder_start_token_id=0))
    return HunyuanVideo15Pipeline(
        text_encoder=text_encoder.eval(), tokenizer=tokenizer, transformer=transformer, vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0), text_encoder_2=text_encoder_2.eval(),
        tokenizer_2=tokenizer_2, guider=ClassifierFreeGuidance(guidance_scale=6.0))


BUILDERS = {"wan21": tiny_wan_pipeline, "wan22": lambda: tiny_wan_pipeline(two_experts=True),
            "hunyuan15": tiny_hunyuan15_pipeline}
CLASSES = {"wan21": "WanPipeline", "wan22": "WanPipeline", "hunyuan15": "HunyuanVideo15Pipeline"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Each tiny pipeline saved once for the module (``model_index.json`` plus its subfolders)."""
    root = tmp_path_factory.mktemp("folders")
    out = {}
    for name, build in BUILDERS.items():
        build().save_pretrained(root / name)
        out[name] = root / name
    return out


def _copy(folder, tmp_path):
    return shutil.copytree(folder, tmp_path / folder.name)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_load_pipeline_reads_the_class_from_the_folder(folders, name):
    pipe = load_pipeline(folders[name], device="cpu")
    assert type(pipe).__name__ == CLASSES[name]
    assert pipe.xattn_model_name == f"{folders[name]} ({CLASSES[name]})"
    assert pipe.transformer.dtype == torch.float32 and pipe.vae.dtype == torch.float32
    if name.startswith("wan"):
        assert (pipe.transformer_2 is not None) == (name == "wan22")


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_generate_runs_the_folder_with_xattention(folders, name, tmp_path):
    out = tmp_path / "gen"
    rc = main(["generate", "--prompt", "a red fox in the snow", "--model", str(folders[name]), *SIZE,
               "--out", str(out)])
    assert rc == 0
    assert read_mp4(out / "video.mp4").shape == (9, 128, 128, 3)
    summary = json.loads((out / "summary.json").read_text())
    GenerateSummary.from_dict(summary)
    assert summary["model"] == f"{folders[name]} ({CLASSES[name]})", "the summary names the pipeline that ran"
    assert (summary["num_frames"], summary["height"], summary["num_inference_steps"]) == (9, 128, 2)
    assert len(summary["timing"]["step_s"]) == 2 and all(a > 0 for a in summary["timing"]["attention_s"])
    density = summary["density"]
    experts = 2 if name == "wan22" else 1
    assert len(density["layers"]) == 2 * experts
    assert set(density["reasons"][0]) <= {"warmup", None}, "the warmup step is dense"
    sparse = [d for row in density["per_step_layer"][1:] for d in row if d is not None and d < 1.0]
    assert sparse and 0 < density["mean_sparse_steps"] < 1, "XAttention skipped blocks after the warmup"
    if name == "wan22":  # both experts ran under the one runtime, each its own layers
        ran = {layer for row in density["reasons"] for layer, r in zip(density["layers"], row) if r is not None}
        assert any(n.startswith("transformer.") for n in ran) and any(n.startswith("transformer_2.") for n in ran)


def test_compare_wan22_dense_vs_sparse(folders, tmp_path):
    """9 x 64 x 64: 3 x 4 x 4 = 48 video tokens in 3 blocks of 16 (the VAE decodes three times here)."""
    from xattn_video import XAttentionConfig

    config = tmp_path / "c.yaml"
    XAttentionConfig(threshold=0.9, block_size=16, stride=4, warmup_steps=1).save(config)
    out = tmp_path / "cmp"
    rc = main(["compare", "--prompt", "a red fox", "--model", str(folders["wan22"]), "--frames", "9", "--height", "64",
               "--width", "64", "--steps", "2", "--config", str(config), "--out", str(out)])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert report["model"] == f"{folders['wan22']} (WanPipeline)"
    assert report["identical"] is False and 0 < report["density"]["mean_sparse_steps"] < 1
    assert (out / "dense.mp4").is_file() and (out / "sparse.mp4").is_file() and (out / "report.md").is_file()
    layers = report["density"]["layers"]
    assert [n.split(".")[0] for n in layers] == ["transformer"] * 2 + ["transformer_2"] * 2, layers


def test_generate_with_float8_linears_and_compiled_blocks(folders, tmp_path, monkeypatch):
    """--fp8-linear then --compile on both Wan 2.2 experts (compiled with aot_eager here: inductor on a CPU takes
    minutes to compile), and the video made through the float8 layers."""
    from diffusers import ModelMixin

    import xattn_video.fp8_linear as fp8_linear
    from xattn_video.fp8_linear import Float8Linear

    calls, quantize, compile_blocks = [], fp8_linear.quantize_linears_fp8, ModelMixin.compile_repeated_blocks
    monkeypatch.setattr(fp8_linear, "quantize_linears_fp8", lambda m: calls.append(("fp8", m)) or quantize(m))
    monkeypatch.setattr(ModelMixin, "compile_repeated_blocks",
                        lambda self: calls.append(("compile", self)) or compile_blocks(self, backend="aot_eager"))
    out = tmp_path / "gen"
    rc = main(["generate", "--prompt", "a red fox", "--model", str(folders["wan22"]), *SIZE, "--fp8-linear",
               "--compile", "--out", str(out)])
    assert rc == 0 and read_mp4(out / "video.mp4").shape == (9, 128, 128, 3)
    timing = json.loads((out / "summary.json").read_text())["timing"]
    assert len(timing["step_s"]) == 2 and timing["attention_s"] is None  # no clock inside the compiled blocks
    assert [kind for kind, _ in calls] == ["fp8", "fp8", "compile", "compile"]
    experts = [m for _, m in calls[:2]]
    assert experts[0] is not experts[1] and [m for _, m in calls[2:]] == experts
    for expert in experts:  # every block's projections ran in float8; the condition embedders did not
        layers = dict(expert.named_modules())
        assert all(isinstance(layers[f"blocks.{i}.attn1.{p}"], Float8Linear) for i in range(2) for p in "to_q to_k".split())
        assert not any(isinstance(m, Float8Linear) for n, m in layers.items() if "embedder" in n)


@pytest.mark.parametrize("args, message", [
    (["--frames", "10"], "--frames=10 must be 4k+1"),
    (["--height", "100"], "--height=100 must be a multiple of 16"),
])
def test_bad_wan_size_is_one_line(folders, args, message, capsys, tmp_path):
    rc = main(["generate", "--prompt", "x", "--model", str(folders["wan21"]), "--out", str(tmp_path), *args])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err


def test_python_api_checks_the_loaded_pipelines_size_and_arguments(folders):
    wan = load_pipeline(folders["wan21"], device="cpu")
    with pytest.raises(ValueError, match="num_frames=10 must be 4k\\+1"):
        timed_generate(wan, "x", num_frames=10, height=128, width=128, num_inference_steps=1)
    hunyuan15 = load_pipeline(folders["hunyuan15"], device="cpu")
    with pytest.raises(ValueError, match="HunyuanVideo15Pipeline takes no guidance_scale"):
        timed_generate(hunyuan15, "x", num_frames=9, height=128, width=128, num_inference_steps=1, guidance_scale=5.0)


def _error(capsys, *argv) -> str:
    assert main(["generate", "--prompt", "x", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    return err


def test_unaccepted_class_names_it_and_the_accepted(folders, tmp_path, capsys):
    folder = _copy(folders["wan21"], tmp_path)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": "FluxPipeline"}))
    err = _error(capsys, "--model", str(folder))
    assert "holds a FluxPipeline; accepted: HunyuanVideoPipeline (HunyuanVideo), WanPipeline (Wan 2.1 / 2.2), " \
           "HunyuanVideo15Pipeline (HunyuanVideo 1.5)" in err


@pytest.mark.parametrize("name, removed", [("wan21", "tokenizer"), ("wan22", "transformer_2"),
                                           ("hunyuan15", "guider")])
def test_missing_subfolder_is_named(folders, name, removed, tmp_path, capsys):
    folder = _copy(folders[name], tmp_path)
    shutil.rmtree(folder / removed)
    err = _error(capsys, "--model", str(folder))
    assert f"is incomplete: missing {removed} (a {CLASSES[name]} folder holds" in err


def test_torchrun_refuses_a_wan_folder_before_joining(folders, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")  # as under torchrun; the check comes before any process group
    err = _error(capsys, "--model", str(folders["wan21"]))
    assert "runs HunyuanVideoPipeline folders only; this folder holds a WanPipeline" in err
