"""A host's attention mask -> per-sample valid key lengths (``kv_len``): the one key-padding parser.

Accepted: ``None`` (every key valid) or a key-padding mask whose non-key dimensions are all 1 (``[N]``,
``[1|B, N]``, ``[1|B, 1, N]``, ``[1|B, 1, 1, N]``), boolean (True = attend; diffusers' ``[B, 1, 1, N]``) or
additive float (0 = attend, <= -1e4 = masked; ComfyUI's ``[1, 1, N]``), whose valid keys are a prefix of the
sequence. Anything else is not a key-padding mask: the runtime's fallback policy decides (see
``ScheduleConfig.fallback``).

Example::

    padding = key_padding(mask, batch=2, n_keys=1050)
    padding.kv_len          # tensor([1050, 1030]) or None (no mask)
    padding.why             # None, or why the mask is not a key-padding mask
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PAD_BIAS = -1.0e4  # additive mask values at or below this are "key masked out"


@dataclass(frozen=True)
class Padding:
    """The outcome of parsing one mask: ``kv_len`` ``[B]`` (None = no mask, every key valid), ``lengths`` the
    same values on the host (for cache keys, without another device sync), or ``why`` it is no key-padding
    mask."""

    kv_len: torch.Tensor | None
    lengths: tuple[int, ...] | None
    why: str | None = None


def key_padding(mask: torch.Tensor | None, batch: int, n_keys: int) -> Padding:
    """Parse ``mask`` for an attention call of ``batch`` samples over ``n_keys`` keys (see the module doc)."""
    if mask is None:
        return Padding(None, None)
    if not isinstance(mask, torch.Tensor) or mask.dim() < 1 or mask.dim() > 4 or mask.shape[-1] != n_keys:
        return Padding(None, None, f"mask shape {tuple(getattr(mask, 'shape', ()))} is not a key mask over "
                                   f"{n_keys} keys")
    m = mask.reshape(1, n_keys) if mask.dim() == 1 else mask
    if any(s != 1 for s in m.shape[1:-1]):
        return Padding(None, None, f"mask shape {tuple(mask.shape)} is not a key-padding mask (it varies over "
                                   "queries or heads)")
    m = m.reshape(m.shape[0], n_keys)
    if m.shape[0] not in (1, batch):
        return Padding(None, None, f"mask batch {m.shape[0]} does not match the attention batch {batch}")
    if m.dtype == torch.bool:
        valid = m
    else:
        valid = m == 0
        if not bool((valid | (m <= PAD_BIAS)).all()):
            return Padding(None, None, "mask holds additive biases other than 0 / -inf (not a key-padding mask)")
    lengths = valid.sum(-1)
    prefix = torch.arange(n_keys, device=m.device)[None, :] < lengths[:, None]
    if not bool((prefix == valid).all()):
        return Padding(None, None, "the valid keys of the mask are not a prefix of the sequence")
    kv_len = lengths.to(torch.long).expand(batch).contiguous()
    host = tuple(int(x) for x in kv_len.tolist())
    if min(host) < 1:
        return Padding(None, None, "the mask masks out every key")
    return Padding(kv_len, host)


def key_padding_lengths(mask: torch.Tensor | None, batch: int, n_keys: int) -> tuple[torch.Tensor | None, str | None]:
    """``key_padding`` as ``(kv_len, None)`` or ``(None, why not)``; ``mask=None`` gives ``(None, None)``."""
    p = key_padding(mask, batch, n_keys)
    return p.kv_len, p.why
