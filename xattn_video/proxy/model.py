"""The proxy model: a small ``HunyuanVideoTransformer3DModel`` that learns procedural video, in a standard
diffusers ``HunyuanVideoPipeline`` folder.

The text side: a word-level tokenizer over the caption vocabulary, a 2-layer Llama whose token embeddings
(the hidden state the pipeline reads, two layers before the last) give each word a fixed random vector, and a
1-layer CLIP for the pooled vector. Both text encoders keep their random weights (fixed by the seed); the
transformer's own token refiner learns to read them. The latent side: pixels (``PixelVAE``), patchified 2x2 by
the transformer, so a 17 x 64 x 64 video is 17 x 32 x 32 = 17,408 video tokens.

A saved proxy folder has the layout of any local HunyuanVideo folder plus ``xattn_proxy.json``: the pipeline
call arguments it needs (its prompt template and text length) and where it came from. Numbers measured with
it describe a model trained here on procedural video, not HunyuanVideo's weights.

Example::

    pipe = proxy_pipeline(proxy_components(seed=0))        # untrained, for tests
    save_proxy(pipe, "out/proxy", info={"trained": "no"})
    pipe = load_proxy("out/proxy")                           # HunyuanVideoPipeline
    video = pipe(prompt="a red circle moving right", **proxy_call_kwargs(pipe)).frames[0]
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .data import COLOURS, DIRECTIONS, SHAPES

INFO_FILE = "xattn_proxy.json"
SPECIALS = ("<pad>", "<unk>", "<bos>", "<eos>")
WORDS = ("a", "moving", "and", *COLOURS, *SHAPES, *DIRECTIONS)
TEXT_LEN = 8  # "<bos> a red circle moving right <eos>" is 7 tokens
TEXT_DIM, POOLED_DIM = 64, 32
PROMPT_TEMPLATE = {"template": "{}", "crop_start": 0}
GUIDANCE = 6.0  # HunyuanVideoPipeline's default guidance_scale: the proxy is trained with this guidance embedding
PROVENANCE = ("a small HunyuanVideoTransformer3DModel trained by xattn-video on procedural video "
              "(coloured shapes on textured backgrounds); not HunyuanVideo's weights")


@dataclass(frozen=True)
class ProxySize:
    """Transformer size: 4 heads x 64 (the Triton kernels' head dim), double- then single-stream blocks."""

    heads: int = 4
    head_dim: int = 64
    double_blocks: int = 2
    single_blocks: int = 4
    refiner_blocks: int = 1

    def rope_axes(self) -> tuple[int, int, int]:
        t = self.head_dim // 4
        s = (self.head_dim - t) // 2
        return (t, s, self.head_dim - t - s)


@dataclass
class ProxyInfo:
    """What ``xattn_proxy.json`` holds: call arguments, default video size, and provenance."""

    prompt_template: dict = field(default_factory=lambda: dict(PROMPT_TEMPLATE))
    max_sequence_length: int = TEXT_LEN
    guidance_scale: float = GUIDANCE
    true_cfg_scale: float = 1.0  # > 1: classifier-free guidance against the empty prompt
    defaults: dict = field(default_factory=lambda: {"num_frames": 9, "height": 32, "width": 32,
                                                   "num_inference_steps": 20})
    provenance: str = PROVENANCE
    training: dict = field(default_factory=dict)


def word_tokenizer():
    """Word-level tokenizer over the caption vocabulary (other words become <unk>), with <bos>/<eos>."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate((*SPECIALS, *WORDS))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", vocab["<bos>"]), ("<eos>", vocab["<eos>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<bos>",
                                   eos_token="<eos>", model_max_length=77)


def proxy_components(seed: int = 0, size: ProxySize = ProxySize(), scheduler_shift: float = 1.0) -> dict:
    """The seven components of an untrained proxy ``HunyuanVideoPipeline``, deterministic from ``seed``."""
    from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideoTransformer3DModel
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    from .vae import PixelVAE

    tokenizer = word_tokenizer()
    ids = {k: tokenizer.convert_tokens_to_ids(k) for k in SPECIALS}
    torch.manual_seed(seed)
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=3, out_channels=3, num_attention_heads=size.heads, attention_head_dim=size.head_dim,
        num_layers=size.double_blocks, num_single_layers=size.single_blocks, num_refiner_layers=size.refiner_blocks,
        patch_size=2, patch_size_t=1, text_embed_dim=TEXT_DIM, pooled_projection_dim=POOLED_DIM,
        rope_axes_dim=size.rope_axes(),
    )
    torch.manual_seed(seed + 1)
    text_encoder = LlamaModel(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=TEXT_DIM, intermediate_size=2 * TEXT_DIM, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
        pad_token_id=ids["<pad>"], bos_token_id=ids["<bos>"], eos_token_id=ids["<eos>"],
    ))
    with torch.no_grad():  # unit-variance word vectors: the pipeline reads the embedding layer's output
        text_encoder.embed_tokens.weight.normal_(0.0, 1.0)
    torch.manual_seed(seed + 2)
    text_encoder_2 = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=POOLED_DIM, intermediate_size=2 * POOLED_DIM, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=77, projection_dim=POOLED_DIM,
        pad_token_id=ids["<pad>"], bos_token_id=ids["<bos>"], eos_token_id=ids["<eos>"],
    ))
    return {
        "transformer": transformer, "vae": PixelVAE(),
        "scheduler": FlowMatchEulerDiscreteScheduler(shift=scheduler_shift),
        "text_encoder": text_encoder.eval().requires_grad_(False), "tokenizer": tokenizer,
        "text_encoder_2": text_encoder_2.eval().requires_grad_(False), "tokenizer_2": word_tokenizer(),
    }


def deepen(transformer: Any, extra_single_blocks: int) -> Any:
    """The same transformer with ``extra_single_blocks`` more single-stream blocks, computing the same function:
    each new block is a copy of the middle single block, inserted after it, with its output projection zeroed
    (the block adds nothing to its residual until training moves it). Grows a trained proxy toward the real
    model's depth without starting over.

    Example::

        pipe.transformer = deepen(pipe.transformer, 4)     # 2 double + 4 single -> 2 double + 8 single blocks
    """
    import copy

    if isinstance(extra_single_blocks, bool) or not isinstance(extra_single_blocks, int) or extra_single_blocks < 1:
        raise ValueError(f"extra_single_blocks={extra_single_blocks!r} is out of range: accepted an integer >= 1")
    blocks = transformer.single_transformer_blocks
    if len(blocks) == 0:
        raise ValueError("the transformer has no single-stream block to copy")
    middle = (len(blocks) - 1) // 2
    new = []
    for _ in range(extra_single_blocks):
        block = copy.deepcopy(blocks[middle])
        with torch.no_grad():
            block.proj_out.weight.zero_()
            block.proj_out.bias.zero_()
        new.append(block)
    transformer.single_transformer_blocks = torch.nn.ModuleList([*blocks[:middle + 1], *new, *blocks[middle + 1:]])
    transformer.register_to_config(num_single_layers=len(transformer.single_transformer_blocks))
    return transformer


def proxy_pipeline(components: dict, info: ProxyInfo | None = None):
    """A ``HunyuanVideoPipeline`` of proxy components, tagged with its call arguments (``proxy_call_kwargs``)."""
    from diffusers import HunyuanVideoPipeline

    pipe = HunyuanVideoPipeline(**components)
    pipe.xattn_proxy_info = info or ProxyInfo()
    pipe.xattn_model_name = "proxy"
    return pipe


def proxy_call_kwargs(pipe: Any, batch: int = 1, true_cfg_scale: float | None = None) -> dict:
    """The call arguments a proxy pipeline needs besides prompt and size: its prompt template and text length,
    and (when its info asks for it, or ``true_cfg_scale`` > 1) guidance against the empty prompt for ``batch``
    prompts. The guidance embedding is the pipeline's default (6.0), as in training."""
    info: ProxyInfo = pipe.xattn_proxy_info
    kw = {"prompt_template": dict(info.prompt_template), "max_sequence_length": info.max_sequence_length}
    cfg = info.true_cfg_scale if true_cfg_scale is None else true_cfg_scale
    if cfg > 1.0:
        kw.update(true_cfg_scale=cfg, negative_prompt=[""] * batch)
    return kw


def save_proxy(pipe: Any, folder: str | Path, info: ProxyInfo | None = None, half: bool = True,
               max_shard_size: str = "14MB") -> Path:
    """Write a proxy pipeline as a diffusers folder (transformer in float16 shards when ``half``) plus
    ``xattn_proxy.json``."""
    folder = Path(folder)
    info = info or pipe.xattn_proxy_info
    dtype = pipe.transformer.dtype
    if half:
        pipe.transformer.to(torch.float16)
    try:
        pipe.save_pretrained(folder, max_shard_size=max_shard_size)
    finally:
        pipe.transformer.to(dtype)
    (folder / INFO_FILE).write_text(json.dumps(asdict(info), indent=2))
    return folder


def is_proxy_folder(folder: str | Path) -> bool:
    return (Path(folder) / INFO_FILE).is_file()


def read_info(folder: str | Path) -> ProxyInfo:
    data = json.loads((Path(folder) / INFO_FILE).read_text())
    known = set(ProxyInfo.__dataclass_fields__)
    return ProxyInfo(**{k: v for k, v in data.items() if k in known})


def load_proxy(folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """Load a saved proxy folder as a ``HunyuanVideoPipeline`` on ``device`` in ``dtype``."""
    from diffusers import HunyuanVideoPipeline

    from . import vae  # noqa: F401  diffusers loads only modules already imported (model_index names PixelVAE's)

    pipe = HunyuanVideoPipeline.from_pretrained(folder, torch_dtype=dtype, local_files_only=True)
    pipe.to(device)
    pipe.xattn_proxy_info = read_info(folder)
    pipe.xattn_model_name = "proxy"
    return pipe
