"""An embedded, random-weight HunyuanVideo pipeline built from diffusers' own classes: nothing is downloaded.

Every component (transformer, VAE, Llama and CLIP text encoders, byte-level tokenizers, flow-matching
scheduler) is built in code and seeded, so the same seed gives the same weights and the same video. Sizes
are small enough for a CPU, yet a default video has 5 x 8 x 8 = 320 video tokens: with the tiny preset's
32-token blocks every query-block row has 11 key blocks (text included) to choose from, so sparse attention
really happens. The query/key RMSNorm gains are raised (``QK_GAIN``) so that, with RoPE, attention is
peaked and position-dependent like a trained model's, rather than the near-uniform attention of plain
random weights. This model draws noise-like videos: it exists to exercise the machinery, not to be looked at.

Example::

    pipe = tiny_pipeline(seed=0)
    frames = pipe(prompt="a cat", **TINY_CALL).frames[0]      # [F, H, W, 3] float in 0..1
"""

from __future__ import annotations

import torch

TINY_DEFAULTS = {"num_frames": 17, "height": 128, "width": 128, "num_inference_steps": 8}
# Arguments a call of the tiny pipeline needs besides the prompt (short text, a template it can tokenize).
TINY_PROMPT_TEMPLATE = {"template": "<|user|>{}<|end|>", "crop_start": 1}  # crop the <|user|> token
TINY_MAX_SEQUENCE_LENGTH = 24
QK_GAIN = 4.0

_HEADS, _HEAD_DIM = 2, 16
_TEXT_DIM, _POOLED_DIM = 32, 16


def byte_tokenizer():
    """A byte-level BPE tokenizer with no merges: every UTF-8 byte is a token, plus special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    specials = ["<pad>", "<bos>", "<eos>", "<unk>", "<|user|>", "<|end|>"]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(specials)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>",
        model_max_length=512,
    )


def tiny_components(seed: int = 0) -> dict:
    """The seven components of a ``HunyuanVideoPipeline``, random-weight and deterministic from ``seed``."""
    from diffusers import AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler, HunyuanVideoTransformer3DModel
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    tokenizer = byte_tokenizer()
    vocab = len(tokenizer)
    torch.manual_seed(seed)
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=_HEADS, attention_head_dim=_HEAD_DIM,
        num_layers=2, num_single_layers=2, num_refiner_layers=1, patch_size=2, patch_size_t=1,
        text_embed_dim=_TEXT_DIM, pooled_projection_dim=_POOLED_DIM, rope_axes_dim=(4, 6, 6),
    )
    with torch.no_grad():
        for name, p in transformer.named_parameters():
            if name.endswith(("norm_q.weight", "norm_k.weight", "norm_added_q.weight", "norm_added_k.weight")):
                p.fill_(QK_GAIN)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKLHunyuanVideo(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("HunyuanVideoDownBlock3D",) * 4, up_block_types=("HunyuanVideoUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4,
        spatial_compression_ratio=8, temporal_compression_ratio=4, mid_block_add_attention=True,
    )
    torch.manual_seed(seed + 2)
    text_encoder = LlamaModel(LlamaConfig(
        vocab_size=vocab, hidden_size=_TEXT_DIM, intermediate_size=64, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    ))
    torch.manual_seed(seed + 3)
    text_encoder_2 = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab, hidden_size=_POOLED_DIM, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=77, projection_dim=_POOLED_DIM,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    ))
    scheduler = FlowMatchEulerDiscreteScheduler(shift=7.0)
    return {
        "transformer": transformer, "vae": vae, "scheduler": scheduler,
        "text_encoder": text_encoder.eval(), "tokenizer": tokenizer,
        "text_encoder_2": text_encoder_2.eval(), "tokenizer_2": byte_tokenizer(),
    }


def tiny_pipeline(seed: int = 0, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """A ready ``HunyuanVideoPipeline`` with the tiny random-weight components (see the module docstring)."""
    from diffusers import HunyuanVideoPipeline

    pipe = HunyuanVideoPipeline(**tiny_components(seed))
    pipe.to(device=device, dtype=dtype)
    pipe.xattn_model_name = "tiny"  # how reports name the model
    return pipe


def tiny_call_kwargs() -> dict:
    """Pipeline-call arguments the tiny model needs (its own prompt template and text length)."""
    return {"prompt_template": dict(TINY_PROMPT_TEMPLATE), "max_sequence_length": TINY_MAX_SEQUENCE_LENGTH}
