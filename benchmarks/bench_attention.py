"""Attention kernel benchmark (GPU): our block-sparse kernel and estimate vs FlexAttention and dense SDPA.

HunyuanVideo shapes (B=1, H=24, D=128, bf16, video + 256 text tokens, the last 30 text keys padding). Beside every
row: the same mask in 8-bit arithmetic (`precision` "int8-fp8" and "fp8": time, cosine to the native output; with
XATTN_GLUON_FP8=1 also the Hopper kernel's fp8 path) and, on the estimate rows, the fp8 estimate (time, density,
Jaccard of its mask against the native one). Rows: random block masks (diagonal kept) at density 1.0 / 0.5 / 0.3 /
0.15, and the masks the estimate picks at tau = 0.9 / 0.95 on structured video-like Q/K (xattn_video.synthetic).
"ours" is the package's default path (on Hopper the Gluon kernel, ``kernels/block_sparse_attention_gluon.py``); the
Triton kernel is timed beside it, and cuDNN frontend's block-sparse attention on the same masks where
``nvidia-cudnn-frontend`` >= 1.32 is importable (``cudnn_block_sparse.py`` beside this file says how; never a
package dependency). Every baseline is measured in the same run; times are triton.testing.do_bench medians on fresh
random (non-zero) inputs.

    python benchmarks/bench_attention.py --out bench_attention.json            # 480p, 544p, 720p
    python benchmarks/bench_attention.py --sizes 480p --quick                  # smoke run
    python benchmarks/bench_attention.py --check-only                          # GPU correctness checks only

Does not import diffusers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from xattn_video.block_mask import BlockSparseMask  # noqa: E402
from xattn_video.config import ceil_div  # noqa: E402
from xattn_video.estimate import estimate_mask  # noqa: E402
from xattn_video.kernels.block_sparse_attention import block_sparse_attention_triton  # noqa: E402
from xattn_video.kernels.block_sparse_attention_gluon import (  # noqa: E402
    block_sparse_attention_gluon,
    gluon_unavailable_reason,
)
from xattn_video.kernels.estimate import strided_block_scores_triton  # noqa: E402
from xattn_video.kernels.reference import (  # noqa: E402
    block_sparse_attention_reference,
    strided_block_scores_reference,
)
from xattn_video.synthetic import video_qkv  # noqa: E402

SIZES = {  # name: (t, h, w) latent grid; + 256 text tokens
    "480p": (16, 30, 53),
    "544p": (33, 34, 60),
    "720p": (33, 45, 80),
}
N_TEXT, N_TEXT_PAD = 256, 30
H, D, BS, STRIDE = 24, 128, 128, 16
LOW_PRECISIONS = ("int8-fp8", "fp8")  # OpConfig.precision values beside the native one


def bench(fn, quick: bool) -> float:
    """Median ms of ``fn`` (do_bench: events, cache flushed between runs)."""
    import triton.testing

    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    est = (time.perf_counter() - t0) * 1e3
    rep = max(3 * est, 30 if quick else 100)  # at least ~3 timed runs even for 300 ms calls
    return float(triton.testing.do_bench(fn, warmup=max(est, 5), rep=rep, return_mode="median"))


def random_mask(density: float, qb: int, kb: int, n: int, kv_len: torch.Tensor, gen: torch.Generator):
    dev = kv_len.device
    if density >= 1.0:
        keep = torch.ones(1, H, qb, kb, dtype=torch.bool, device=dev)
    else:
        keep = torch.rand(1, H, qb, kb, generator=gen, device=dev) < density
        keep |= torch.eye(qb, kb, dtype=torch.bool, device=dev)
    return BlockSparseMask.from_dense(keep, BS, n, kv_len)


def flex_block_mask(mask: BlockSparseMask, n: int):
    """FlexAttention BlockMask with the same blocks: fully valid blocks as 'full', the padded one partial."""
    from torch.nn.attention.flex_attention import BlockMask

    idx, cnt = mask.kv_indices.long(), mask.kv_counts
    kv_len = mask.kv_len
    valid = torch.arange(idx.shape[-1], device=idx.device) < cnt[..., None]
    full = valid & ((idx + 1) * BS <= kv_len[:, None, None, None])
    part = valid & ~full

    def compact(sel):  # ascending indices of the selected slots first, 0-padded (Flex reads only count)
        key = torch.where(sel, idx, idx.new_full((), 1 << 30))
        srt = key.sort(-1).values
        num = sel.sum(-1).to(torch.int32)
        return num, torch.where(srt < (1 << 30), srt, 0).to(torch.int32).contiguous()

    p_num, p_idx = compact(part)
    f_num, f_idx = compact(full)
    kvl = kv_len.clone()
    keep = mask.to_dense()  # read only on partial blocks; keeps eager Flex (which ignores blocks) exact too

    def key_valid(b, h, q_idx, kv_idx):
        return (kv_idx < kvl[b]) & keep[b, h, q_idx // BS, kv_idx // BS]

    return BlockMask.from_kv_blocks(p_num, p_idx, f_num, f_idx, BLOCK_SIZE=BS, mask_mod=key_valid,
                                    seq_lengths=(n, n))


def subset_reference_error(q, k, v, mask: BlockSparseMask, out: torch.Tensor, n_blocks: int = 3) -> float:
    """Max abs error of ``out`` vs the fp32 reference on a few query blocks (the last, partial one too)."""
    qb = mask.num_q_blocks
    sel = sorted({0, qb // 2, qb - 1} if n_blocks >= 3 else {qb - 1})
    rows = torch.cat([torch.arange(i * BS, min((i + 1) * BS, q.shape[2]), device=q.device) for i in sel])
    sub = BlockSparseMask(mask.kv_indices[:, :, sel], mask.kv_counts[:, :, sel], BS, len(rows), mask.kv_len)
    ref = block_sparse_attention_reference(q[:, :, rows], k, v, sub, q_blocks_per_chunk=1)
    return float((out[:, :, rows].float() - ref.float()).abs().max())


def gpu_checks() -> list[dict]:
    """Kernels vs references on the GPU, bf16 / fp16, small and medium shapes. Raises on a mismatch."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    results = []
    for dtype in (torch.bfloat16, torch.float16):
        for bs, n, d, h, mask_h in ((128, 1000, 128, 4, None), (128, 2333, 64, 3, 1), (64, 700, 128, 2, None),
                                    (32, 300, 64, 2, None)):
            b = 2
            q, k, v = (torch.randn(b, h, n, d, device="cuda", generator=gen, dtype=torch.float32).to(dtype)
                       for _ in range(3))
            kv_len = torch.tensor([n, n - 77], device="cuda")
            qb = ceil_div(n, bs)
            keep = (torch.rand(b, mask_h or h, qb, qb, device="cuda", generator=gen) < 0.4)
            keep |= torch.eye(qb, dtype=torch.bool, device="cuda")
            mask = BlockSparseMask.from_dense(keep, bs, n, kv_len)
            out = block_sparse_attention_triton(q, k, v, mask)
            ref = block_sparse_attention_reference(q, k, v, mask)
            err = float((out.float() - ref.float()).abs().max())
            rel = float((out.float() - ref.float()).norm() / ref.float().norm())
            for stride in (16, 8):
                qs, ks = q * 3, k * 3  # peakier rows
                s = strided_block_scores_triton(qs, ks, bs, stride, kv_len) if bs // stride >= 2 else None
                if s is None:
                    continue
                r = strided_block_scores_reference(qs, ks, bs, stride, kv_len)
                est_err = float((s - r).abs().max())
                results.append(dict(check="estimate", dtype=str(dtype), bs=bs, stride=stride, n=n, d=d,
                                    max_abs_err=est_err))
                if not est_err < 2e-2:
                    raise AssertionError(f"estimate mismatch {results[-1]}")
                # fp8: the tensor cores accumulate e4m3 products in less than fp32, hence a looser bound
                s8 = strided_block_scores_triton(qs, ks, bs, stride, kv_len, precision="fp8")
                r8 = strided_block_scores_reference(qs, ks, bs, stride, kv_len, precision="fp8")
                results.append(dict(check="estimate fp8", dtype=str(dtype), bs=bs, stride=stride, n=n, d=d,
                                    max_abs_err=float((s8 - r8).abs().max())))
                if not results[-1]["max_abs_err"] < 1e-1:
                    raise AssertionError(f"estimate mismatch {results[-1]}")
            results.append(dict(check="attention", dtype=str(dtype), bs=bs, n=n, d=d, max_abs_err=err, rel_err=rel))
            if not (rel < 1e-2 and torch.isfinite(out).all()):
                raise AssertionError(f"attention mismatch {results[-1]}")
            for precision in LOW_PRECISIONS if bs % 64 == 0 else ():  # against the twin's same rounding
                low = block_sparse_attention_triton(q, k, v, mask, precision=precision)
                twin = block_sparse_attention_reference(q, k, v, mask, precision=precision)
                rel = float((low.float() - twin.float()).norm() / twin.float().norm())
                results.append(dict(check=f"attention {precision}", dtype=str(dtype), bs=bs, n=n, d=d, rel_err=rel))
                if not (rel < 3e-2 and torch.isfinite(low).all()):
                    raise AssertionError(f"attention mismatch {results[-1]}")
    for r in results:
        print("check", r)
    return results


def fault_checks(device: str = "cuda") -> list[dict]:
    """NaN / +-Inf in q, k or v at one element: the compiled Triton path (estimate, selection, attention) must
    put NaN and Inf exactly where dense SDPA over the valid keys does at tau = 1, and where the reference path
    on the same mask does at tau = 0.5 (the interpreter tests cannot see how the GPU's max / exp2 treat NaN).
    Records failures instead of raising, so the timing rows still run."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from xattn_video.attention import xattention
    from xattn_video.config import OpConfig

    def dense(q, k, v, kv_len):  # over each sample's valid keys, sliced
        return torch.cat([F.scaled_dot_product_attention(q[i:i + 1], k[i:i + 1, :, :m], v[i:i + 1, :, :m])
                          for i, m in enumerate(kv_len.tolist())])

    results = []
    for dtype in (torch.bfloat16, torch.float16):
        for tensor in ("q", "k", "v"):
            for name, value in (("nan", float("nan")), ("+inf", float("inf")), ("-inf", float("-inf"))):
                gen = torch.Generator(device=device).manual_seed(7)
                b, h, n, d, bs = 2, 2, 333, 64, 64
                q, k, v = (torch.randn(b, h, n, d, device=device, generator=gen).to(dtype) for _ in range(3))
                kv_len = torch.tensor([n, n - 9], device=device)
                {"q": q, "k": k, "v": v}[tensor][:, 1, 100, 5] = value  # head 1 only: head 0 stays clean
                for tau in (1.0, 0.5):
                    cfg = OpConfig(block_size=bs, stride=8, threshold=tau, keep_diagonal=False, keep_text=False,
                                   backend="triton")
                    out, mask = xattention(q, k, v, cfg, kv_len)
                    fused = None
                    if tau == 1.0:  # the definition: SDPA's math backend in fp32 (the tests' too)
                        with sdpa_kernel(SDPBackend.MATH):
                            want = dense(q.float(), k.float(), v.float(), kv_len)
                        fused = dense(q, k, v, kv_len)  # what the GPU's fused SDPA gives, for the record
                    else:
                        want = block_sparse_attention_reference(q, k, v, mask)
                    ok = (torch.equal(out.isnan(), want.isnan()) and torch.equal(out.isinf(), want.isinf())
                          and bool(out[:, 0].isfinite().all()))
                    finite = out.isfinite() & want.isfinite()
                    err = float((out.float() - want.float())[finite].abs().max()) if finite.any() else 0.0
                    results.append(dict(check="fault", dtype=str(dtype), tensor=tensor, fault=name, tau=tau,
                                        nan_out=int(out.isnan().sum()), nan_want=int(want.isnan().sum()),
                                        inf_out=int(out.isinf().sum()), inf_want=int(want.isinf().sum()),
                                        nan_fused_sdpa=None if fused is None else int(fused.isnan().sum()),
                                        max_abs_err_finite=err, ok=bool(ok and err < 5e-2)))
    bad = [r for r in results if not r["ok"]]
    print(f"fault checks: {len(results) - len(bad)} of {len(results)} as dense SDPA / the reference")
    for r in bad:
        print("FAULT CHECK FAILED", r)
    return results


def gluon_fp8(q, k, v, mask) -> bool:
    """Whether the Hopper kernel's fp8 path runs here (opt-in with XATTN_GLUON_FP8=1 until checked on a GPU)."""
    return gluon_unavailable_reason(q, k, v, mask, "fp8") is None


def attention_kernel(q, k, v, mask) -> str:
    """Which kernel block_sparse_attention_triton runs for this call: "gluon" (Hopper) or "triton"."""
    return "triton" if gluon_unavailable_reason(q, k, v, mask) else "gluon"


def run_size(name: str, quick: bool, flex_fn, cudnn_bsa, rows: list[dict]) -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    import torch.nn.functional as F

    t, hh, ww = SIZES[name]
    n_video = t * hh * ww
    n = n_video + N_TEXT
    kv_n = n - N_TEXT_PAD
    qb = ceil_div(n, BS)
    dev = "cuda"
    kv_len = torch.tensor([kv_n], device=dev)
    gen = torch.Generator(device=dev).manual_seed(list(SIZES).index(name))
    q, k, v = (torch.randn(1, H, n, D, device=dev, dtype=torch.bfloat16, generator=gen) for _ in range(3))
    flops_dense = 4.0 * n * n * D * H

    # dense baselines over the valid keys (slicing keeps SDPA on its fastest kernels)
    ks, vs = k[:, :, :kv_n], v[:, :, :kv_n]
    dense = {}
    for label, backend in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION)):
        try:
            with sdpa_kernel(backend):
                dense[label] = bench(lambda: F.scaled_dot_product_attention(q, ks, vs), quick)
        except Exception as e:  # noqa: BLE001 - a missing backend is reported, not fatal
            print(f"[{name}] SDPA {label} failed: {type(e).__name__}: {e}", flush=True)
            dense[label] = float("nan")
    print(f"[{name}] N={n} dense cuDNN {dense['cudnn']:.2f} ms, flash {dense['flash']:.2f} ms", flush=True)

    # structured Q/K: the masks the estimate picks
    sq, sk, sv, s_kv = video_qkv(t, hh, ww, n_text=N_TEXT, n_text_valid=N_TEXT - N_TEXT_PAD, heads=H, head_dim=D,
                                 dtype=torch.bfloat16, device=dev, seed=1)
    scores_ms = bench(lambda: strided_block_scores_triton(sq, sk, BS, STRIDE, s_kv), quick)
    s_tri = strided_block_scores_triton(sq, sk, BS, STRIDE, s_kv)
    heads_chk = slice(0, 2 if quick else 4)  # the reference's fp32 logits are (N/S)^2 per head
    s_ref = strided_block_scores_reference(sq[:, heads_chk], sk[:, heads_chk], BS, STRIDE, s_kv)
    est_err = float((s_tri[:, heads_chk] - s_ref).abs().max())
    print(f"[{name}] estimate scores {scores_ms:.2f} ms, max abs err vs reference {est_err:.2e}", flush=True)

    cases = [(f"random d={p}", p, None) for p in ((1.0, 0.3) if quick else (1.0, 0.5, 0.3, 0.15))]
    cases += [(f"estimate tau={tau}", None, tau) for tau in ((0.9,) if quick else (0.9, 0.95))]
    for label, density, tau in cases:
        if tau is None:
            mask = random_mask(density, qb, qb, n, kv_len, gen)
            qq, kk, vv = q, k, v
            select_ms = float("nan")
        else:
            def est():
                return estimate_mask(sq, sk, block_size=BS, stride=STRIDE, threshold=tau, kv_len=s_kv,
                                     global_start=n_video, backend="triton")
            mask = est()
            select_ms = bench(est, quick)
            qq, kk, vv = sq, sk, sv
        dens = mask.density()
        ours_ms = bench(lambda: block_sparse_attention_triton(qq, kk, vv, mask), quick)
        out = block_sparse_attention_triton(qq, kk, vv, mask)
        with mock.patch.dict(os.environ, {"XATTN_NO_GLUON": "1"}):  # the Triton kernel where the Gluon one runs
            triton_ms = bench(lambda: block_sparse_attention_triton(qq, kk, vv, mask), quick)
        err_ref = subset_reference_error(qq, kk, vv, mask, out, 1 if quick else 3)
        low = {}  # the 8-bit arithmetic on the same mask: time, and how close to the native output
        for precision in LOW_PRECISIONS + (("fp8 Hopper",) if gluon_fp8(qq, kk, vv, mask) else ()):
            def run():
                if precision == "fp8 Hopper":  # the Gluon kernel's fp8 path (opt-in: XATTN_GLUON_FP8=1)
                    return block_sparse_attention_gluon(qq, kk, vv, mask, precision="fp8")
                return block_sparse_attention_triton(qq, kk, vv, mask, precision=precision)
            ms = bench(run, quick)
            o = run().float()
            low[precision] = dict(ms=ms, tflops=flops_dense * dens / ms / 1e9, x_native=ours_ms / ms,
                                  cos_vs_native=float(F.cosine_similarity(o.flatten(), out.float().flatten(), 0)))
            del o
        if tau is not None:  # the fp8 estimate: its cost and how its mask compares
            def est8():
                return estimate_mask(sq, sk, block_size=BS, stride=STRIDE, threshold=tau, kv_len=s_kv,
                                     global_start=n_video, backend="triton", precision="fp8")
            a, b8 = mask.to_dense(), est8().to_dense()
            low["estimate fp8"] = dict(select_ms=bench(est8, quick), density=float(b8.float().mean()),
                                       jaccard_vs_native=float((a & b8).sum() / (a | b8).sum()))
            del a, b8
        flex_ms, err_flex = float("nan"), float("nan")
        if flex_fn is not None:
            try:
                bm = flex_block_mask(mask, n)
                flex_ms = bench(lambda: flex_fn(qq, kk, vv, block_mask=bm), quick)
                err_flex = float((flex_fn(qq, kk, vv, block_mask=bm).float() - out.float()).abs().max())
            except Exception as e:  # noqa: BLE001
                print(f"[{name}] flex failed: {type(e).__name__}: {e}", flush=True)
        cudnn_bsa_ms, err_cudnn_bsa = float("nan"), float("nan")
        if cudnn_bsa is not None:  # cuDNN's block-sparse attention on the same mask
            try:
                fn = cudnn_bsa(qq, kk, vv, mask)
                cudnn_bsa_ms = bench(fn, quick)
                err_cudnn_bsa = float((fn().float() - out.float()).abs().max())
                del fn
            except Exception as e:  # noqa: BLE001 - reported, the row goes on
                print(f"[{name}] cuDNN block-sparse failed: {type(e).__name__}: {e}", flush=True)
        row = dict(
            size=name, n=n, kv_len=kv_n, mask=label, density=dens, ours_ms=ours_ms,
            ours_tflops=flops_dense * dens / ours_ms / 1e9, triton_kernel_tflops=flops_dense * dens / triton_ms / 1e9,
            kernel=attention_kernel(qq, kk, vv, mask), flex_ms=flex_ms,
            flex_tflops=flops_dense * dens / flex_ms / 1e9, cudnn_bsa_ms=cudnn_bsa_ms,
            cudnn_bsa_tflops=flops_dense * dens / cudnn_bsa_ms / 1e9, max_err_vs_cudnn_bsa=err_cudnn_bsa,
            cudnn_dense_ms=dense["cudnn"],
            flash_dense_ms=dense["flash"], speedup_vs_cudnn=dense["cudnn"] / ours_ms,
            estimate_scores_ms=scores_ms if tau is not None else float("nan"),
            estimate_select_ms=select_ms, estimate_pct_of_cudnn=100.0 * select_ms / dense["cudnn"],
            max_err_vs_ref=err_ref, max_err_vs_flex=err_flex, estimate_max_err=est_err, low_precision=low,
        )
        rows.append(row)
        print(f"[{name}] {label:18s} dens {dens:.3f} ours ({row['kernel']}) {ours_ms:8.2f} ms "
              f"{row['ours_tflops']:6.0f} TF"
              f" (Triton kernel {row['triton_kernel_tflops']:.0f}) | flex "
              f"{flex_ms:8.2f} ms {row['flex_tflops']:6.0f} TF | cuDNN BSA {row['cudnn_bsa_tflops']:6.0f} TF"
              f" | est+sel {select_ms:6.2f} ms | err ref {err_ref:.1e}"
              f" flex {err_flex:.1e}", flush=True)
        for precision, r in low.items():
            print(f"[{name}] {label:18s} {precision}: {r}", flush=True)
        del mask
    del q, k, v, sq, sk, sv
    torch.cuda.empty_cache()


def low_precision_table(rows: list[dict]) -> str:
    """The 8-bit rows: attention time and closeness to the native output; the fp8 estimate's cost and mask."""
    lines = ["| size | mask | density | native ms | int8-fp8 ms (x native, cosine) | fp8 ms (x native, cosine) | "
             "fp8 Hopper kernel ms (x native, cosine) | est + select native ms | est + select fp8 ms | "
             "fp8 mask density / Jaccard |", "|" + "---|" * 10]
    for r in rows:
        lo = r.get("low_precision", {})
        cells = [f"{lo[p]['ms']:.2f} ({lo[p]['x_native']:.2f}x, {lo[p]['cos_vs_native']:.5f})" if p in lo else "–"
                 for p in LOW_PRECISIONS + ("fp8 Hopper",)]
        e = lo.get("estimate fp8")
        lines.append(f"| {r['size']} | {r['mask']} | {r['density']:.3f} | {r['ours_ms']:.2f} | {' | '.join(cells)} | "
                     f"{r['estimate_select_ms']:.2f} | {e['select_ms'] if e else float('nan'):.2f} | "
                     + (f"{e['density']:.3f} / {e['jaccard_vs_native']:.3f} |" if e else "– |"))
    return "\n".join(lines)


def table(rows: list[dict]) -> str:
    head = ("| size | mask | density | ours ms | ours TFLOPS | kernel | Triton kernel TFLOPS | Flex ms | Flex TFLOPS "
            "| cuDNN block-sparse TFLOPS | cuDNN dense ms | flash dense ms "
            "| speedup vs cuDNN | est+select ms | est % of cuDNN | max err vs ref | max err vs Flex |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(
            f"| {r['size']} | {r['mask']} | {r['density']:.3f} | {r['ours_ms']:.2f} | {r['ours_tflops']:.0f} | "
            f"{r.get('kernel', 'triton')} | {r.get('triton_kernel_tflops', float('nan')):.0f} | "
            f"{r['flex_ms']:.2f} | {r['flex_tflops']:.0f} | {r.get('cudnn_bsa_tflops', float('nan')):.0f} | "
            f"{r['cudnn_dense_ms']:.2f} | {r['flash_dense_ms']:.2f} | "
            f"{r['speedup_vs_cudnn']:.2f}x | {r['estimate_select_ms']:.2f} | {r['estimate_pct_of_cudnn']:.1f}% | "
            f"{r['max_err_vs_ref']:.1e} | {r['max_err_vs_flex']:.1e} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="480p,544p,720p", help=f"comma list of {list(SIZES)}")
    ap.add_argument("--quick", action="store_true", help="fewer rows and shorter timing")
    ap.add_argument("--out", default=None, help="write the rows (and checks) as JSON here")
    ap.add_argument("--no-flex", action="store_true", help="skip FlexAttention")
    ap.add_argument("--no-cudnn-bsa", action="store_true", help="skip cuDNN's block-sparse attention")
    ap.add_argument("--no-check", action="store_true", help="skip the GPU correctness checks")
    ap.add_argument("--check-only", action="store_true", help="only the GPU correctness checks")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_attention needs a CUDA GPU", file=sys.stderr)
        return 2
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    bad = [s for s in sizes if s not in SIZES]
    if bad:
        ap.error(f"unknown size(s) {bad}; accepted: {list(SIZES)}")
    import triton

    t_start = time.perf_counter()
    info = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                python=platform.python_version(), date=time.strftime("%Y-%m-%d %H:%M:%S %Z"), argv=sys.argv)
    print(info, flush=True)
    checks = [] if args.no_check else gpu_checks() + fault_checks()
    rows: list[dict] = []
    if not args.check_only:
        flex_fn = None
        if not args.no_flex:
            from torch.nn.attention.flex_attention import flex_attention

            flex_fn = torch.compile(flex_attention, dynamic=False)
        cudnn_bsa = None
        if not args.no_cudnn_bsa:
            from cudnn_block_sparse import cudnn_block_sparse_unavailable_reason, make_cudnn_block_sparse

            why = cudnn_block_sparse_unavailable_reason()
            print(f"cuDNN block-sparse attention: {why or 'timed'}", flush=True)
            cudnn_bsa = None if why else make_cudnn_block_sparse
        for s in sizes:
            run_size(s, args.quick, flex_fn, cudnn_bsa, rows)
            if args.out:  # after every size, so a cut-off run still leaves its rows
                Path(args.out).write_text(json.dumps(dict(info=info, checks=checks, rows=rows), indent=1))
    info["seconds"] = time.perf_counter() - t_start
    if rows:
        print()
        print(table(rows))
        print()
        print(low_precision_table(rows))
    print(f"total {info['seconds']:.0f} s")
    if args.out:
        Path(args.out).write_text(json.dumps(dict(info=info, checks=checks, rows=rows), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
