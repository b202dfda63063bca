"""From a video x video block choice to the full BlockSparseMask of a joint video + text sequence.

Text is global in every peer's pattern, as in XAttention with ``keep_text``: the key blocks holding a valid text
token are kept by every query block, and query blocks holding a text token attend every valid key block. Key
blocks past ``kv_len`` (padded text) are dropped.

Example::

    keep = video_block_keep(Window3D((1, 2, 2)), layout, 64)                  # [VB, VB]
    mask = assemble_mask(keep, layout, 64, q_len=layout.num_tokens + 256, kv_len=torch.tensor([layout.num_tokens + 40]))
"""

from __future__ import annotations

import torch

from ..block_mask import BlockSparseMask
from ..config import ceil_div
from .layout import VideoLayout


def check_sequence(layout: VideoLayout, q_len: int, global_start: int | None = None) -> None:
    """Raise ``ValueError`` unless a sequence of ``q_len`` tokens is ``layout``'s video followed by text."""
    n = layout.num_tokens
    if q_len < n:
        raise ValueError(f"the sequence has {q_len} tokens, fewer than the layout's {n} video tokens "
                         f"({layout.frames} x {layout.height} x {layout.width})")
    if global_start is not None and global_start != n:
        raise ValueError(f"global_start={global_start} (the first text token) must equal the layout's {n} video "
                         f"tokens ({layout.frames} x {layout.height} x {layout.width})")


def assemble_mask(
    video_keep: torch.Tensor,
    layout: VideoLayout,
    block_size: int,
    q_len: int,
    kv_len: torch.Tensor | None = None,
    keep_diagonal: bool = True,
) -> BlockSparseMask:
    """The ``BlockSparseMask`` of a ``q_len``-token joint sequence (self-attention, video then text).

    Args:
        video_keep: ``[VB, VB]`` or ``[B | 1, H | 1, VB, VB]`` bool over the blocks that hold video tokens.
        layout: the video grid; tokens at or past ``layout.num_tokens`` are text.
        block_size: side of the blocks of ``video_keep``.
        q_len: tokens in the sequence (video + text, padding included).
        kv_len: ``[B]`` valid key lengths (default: all ``q_len``).
        keep_diagonal: also keep each row's diagonal block.
    """
    check_sequence(layout, q_len)
    n_video = layout.num_tokens
    vb = ceil_div(n_video, block_size)
    if video_keep.dim() == 2:
        video_keep = video_keep[None, None]
    if video_keep.dim() != 4 or video_keep.shape[-2:] != (vb, vb) or video_keep.dtype != torch.bool:
        raise ValueError(f"video_keep must be bool [VB, VB] or [B, H, VB, VB] with VB={vb}, got "
                         f"{video_keep.dtype} {tuple(video_keep.shape)}")
    dev = video_keep.device
    if kv_len is None:
        kv_len = torch.full((video_keep.shape[0],), q_len, dtype=torch.long)
    kv_len = kv_len.to(device=dev, dtype=torch.long)
    if video_keep.shape[0] not in (1, kv_len.shape[0]):
        raise ValueError(f"video_keep has batch {video_keep.shape[0]}, kv_len has {kv_len.shape[0]}")
    nb = ceil_div(q_len, block_size)
    keep = torch.zeros(kv_len.shape[0], video_keep.shape[1], nb, nb, dtype=torch.bool, device=dev)
    keep[..., :vb, :vb] = video_keep
    start = torch.arange(nb, device=dev) * block_size
    text_keys = (start + block_size > n_video)[None, :] & (n_video < kv_len)[:, None]  # [B, NB]
    keep |= text_keys[:, None, None, :]
    if n_video < q_len:
        keep[:, :, start + block_size > n_video, :] = True  # text queries attend everything valid
    if keep_diagonal:
        keep |= torch.eye(nb, dtype=torch.bool, device=dev)
    return BlockSparseMask.from_dense(keep, block_size, q_len, kv_len)
