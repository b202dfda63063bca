"""Block-sparse flash attention (forward) for Hopper, in Gluon: FlashAttention-3's warp specialisation.

The Triton kernel (``block_sparse_attention.py``) cannot place its tensor-core waits, so its softmax never runs
beside a product. This one is written in Gluon (Triton's lower-level dialect, Triton >= 3.6) with FA3's layout:
a producer warp copies each kept key / value tile into a ring of shared-memory slots (TMA), two consumer
warpgroups own 64 query rows each, and every consumer issues ``Q.K^T`` of tile j and ``P.V`` of tile j-1
asynchronously, waits for the first only and runs tile j's softmax while ``P.V`` runs; the two consumers take
turns issuing their products (ping-pong), so one's softmax also overlaps the other's products.

Each launch runs one persistent program per multiprocessor: its producer takes the next query block from a
counter over ``work_order`` (head after head, longest rows first) and loads its rows while the consumers finish
the last block, so the programs running at once share one head's keys and values in the L2, a block's start
costs no launch, and the launch ends on its shortest rows.

Long sequences run the kept blocks in ``key_splits`` launches by key range (each launch continues the online
softmax of the one before from the output and the row statistics it left): one range of every head's keys and
values then stays in the L2 while all multiprocessors read it (720p bf16: 61 MB of keys and values per head).

Hopper only (sm_90), head_dim 128, bf16 / fp16, mask blocks of 128, native precision; ``gluon_unavailable_reason``
says why a call cannot run here. ``precision="fp8"`` runs the same schedule on the e4m3 copies of
``kernels/quantize.py`` (5 ring slots of 32 KB; built and its build tested, not yet run on a GPU: opt-in with
``XATTN_GLUON_FP8=1``, never chosen by the dispatcher). ``block_sparse_attention_triton`` launches it where it can
(``XATTN_NO_GLUON=1`` turns that off). Twin: ``reference.block_sparse_attention_reference``; Gluon has no CPU
interpreter, so its numerics are tested on a GPU and its build (the overlapped waits, registers, shared memory) on
the CPU.

Example::

    out = block_sparse_attention_gluon(q, k, v, mask)   # q, k, v [B, H, N, 128] bf16 on an H100 / H200
"""

from __future__ import annotations

import math
import os

import torch
import triton

from ..block_mask import BlockSparseMask
from ..config import ceil_div
from .reference import ATTENTION_GROUP

GLUON_IMPORT_ERROR: str | None = None
try:  # Gluon's Hopper API as this module uses it is Triton >= 3.6's (3.5 orders warp_specialize's arguments otherwise)
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma, warpgroup_mma, warpgroup_mma_wait
except ImportError as e:  # pragma: no cover - depends on the installed Triton
    GLUON_IMPORT_ERROR = f"triton {triton.__version__} has no Gluon Hopper API ({e})"
if GLUON_IMPORT_ERROR is None and tuple(int(x) for x in triton.__version__.split(".")[:2]) < (3, 6):
    GLUON_IMPORT_ERROR = f"triton {triton.__version__} is older than 3.6, whose Gluon API this kernel is written in"

LOG2E = 1.4426950408889634
BLOCK = 128  # mask block = key tile = query rows per program (two warpgroups of 64)
HEAD_DIM = 128
STAGES = 3  # key / value ring slots: 3 x 64 KB plus the 32 KB query tile fill the 227 KB of shared memory
STAGES_FP8 = 5  # in fp8 a slot is 32 KB
DTYPES = (torch.bfloat16, torch.float16)
L2_SHARE = 0.6  # a key range's keys + values fit 60% of the L2 (RESULTS.md: 1 range at 544p, 2 at 720p)

if GLUON_IMPORT_ERROR is None:
    _BLOCK, _HEAD_DIM, _STAGES = gl.constexpr(BLOCK), gl.constexpr(HEAD_DIM), gl.constexpr(STAGES)
    _STAGES_FP8 = gl.constexpr(STAGES_FP8)
    _Q_GROUP = gl.constexpr(ATTENTION_GROUP)  # query rows per q scale of the fp8 copies
    # the bulk-copy load's name: Triton 3.6's; 3.8 adds async_load, 3.9 keeps only that one
    _tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared
    _sync_warps = getattr(gl, "barrier", None) or gl.thread_barrier  # 3.6's name; 3.8 renames it

    @gluon.jit
    def _work_item(ORDER, it, QB, H, START, CNT, s_rb, s_rh, s_rq):
        """Work item ``it`` of the launch's order: (batch, head, query block, first kept entry of this key range,
        its count); batch and head as int64 for the offsets."""
        item = gl.load(ORDER + it)
        bh = item // QB
        blk = item % QB
        b = (bh // H).to(gl.int64)
        h = (bh % H).to(gl.int64)
        start = gl.load(START + b * s_rb + h * s_rh + blk * s_rq)
        cnt = gl.load(CNT + b * s_rb + h * s_rh + blk * s_rq)
        return b, h, blk, start, cnt

    @gluon.jit
    def _producer(Q, K, V, q_smem, k_smem, v_smem, q_bar, q_free, ready, empty, id_bar, item_smem, COUNTER, ORDER,
                  n_items, QB, H, START, CNT, s_rb, s_rh, s_rq, IDX, s_ib, s_ih, s_iq, s_ik, KVLEN, n_q, s_qb, s_qh,
                  s_qn, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn):
        """One warp: takes the launch's next work item (an atomic counter: the programs running at once work on
        neighbouring items, whose keys and values the L2 holds), hands its number and its query rows to the
        consumers once both are done with the previous item's rows, then loads each kept tile's keys and values into
        the ring, a slot as soon as both consumers have released it; so the next item's loads overlap the last tiles
        and the stores of this one. Past the last item it hands them its number, which ends them. The descriptors
        span [kv_len, D] of one (batch, head) (fp8: v's [D, kv_len]): keys past kv_len arrive as zeros, so padded
        keys are never read. (A partition takes no constexpr arguments in Triton 3.6: constants come from buffer
        shapes.)"""
        STAGES_: gl.constexpr = k_smem.shape[0]
        BN: gl.constexpr = k_smem.shape[1]
        D: gl.constexpr = k_smem.shape[2]
        HALF: gl.constexpr = q_smem.shape[1]
        FP8: gl.constexpr = q_smem.dtype == gl.float8e4nv  # v then comes transposed: [D, N] a head, row stride s_vn
        id_layout: gl.constexpr = gl.BlockedLayout([1], [32], [1], [0])
        t_all = 0  # tiles loaded so far: the ring position and its phase
        r = 0  # items so far
        it = gl.atomic_add(COUNTER, 1)
        while it < n_items:
            b, h, blk, start, cnt = _work_item(ORDER, it, QB, H, START, CNT, s_rb, s_rh, s_rq)
            kv_len = gl.load(KVLEN + b)
            # the descriptors below rewrite the previous item's: its last loads (rows, last tile) must have landed
            # (parity 1 of a fresh barrier passes at once)
            mbarrier.wait(q_bar.index(0), (r & 1) ^ 1)
            mbarrier.wait(ready.index((t_all + STAGES_ - 1) % STAGES_), (((t_all + STAGES_ - 1) // STAGES_) & 1) ^ 1)
            q_desc = tma.make_tensor_descriptor(Q + b * s_qb + h * s_qh, [n_q, D], [s_qn, 1], [HALF, D],
                                                q_smem.layout)
            k_desc = tma.make_tensor_descriptor(K + b * s_kb + h * s_kh, [kv_len, D], [s_kn, 1], [BN, D],
                                                k_smem.layout)
            if FP8:
                v_desc = tma.make_tensor_descriptor(V + b * s_vb + h * s_vh, [D, kv_len], [s_vn, 1], [D, BN],
                                                    v_smem.layout)
            else:
                v_desc = tma.make_tensor_descriptor(V + b * s_vb + h * s_vh, [kv_len, D], [s_vn, 1], [BN, D],
                                                    v_smem.layout)
            mbarrier.wait(q_free.index(0), (r & 1) ^ 1)
            # once both consumers are done with the last item's rows (they have read its number): this one's
            # number (slot r & 1, read after id_bar's phase r), then its rows
            item_smem.index(r & 1).store(gl.full([1], it, gl.int32, id_layout))
            _sync_warps()
            mbarrier.arrive(id_bar.index(0))
            mbarrier.expect(q_bar.index(0), 2 * q_desc.block_type.nbytes)
            _tma_load(q_desc, [blk * 2 * HALF, 0], q_bar.index(0), q_smem.index(0))
            _tma_load(q_desc, [blk * 2 * HALF + HALF, 0], q_bar.index(0), q_smem.index(1))
            idx_row = IDX + b * s_ib + h * s_ih + blk * s_iq + start * s_ik
            for t in range(cnt):
                slot = (t_all + t) % STAGES_
                mbarrier.wait(empty.index(slot), (((t_all + t) // STAGES_) & 1) ^ 1)
                kb = gl.load(idx_row + t * s_ik)
                bar = ready.index(slot)
                mbarrier.expect(bar, k_desc.block_type.nbytes + v_desc.block_type.nbytes)
                _tma_load(k_desc, [kb * BN, 0], bar, k_smem.index(slot))
                if FP8:
                    _tma_load(v_desc, [0, kb * BN], bar, v_smem.index(slot))
                else:
                    _tma_load(v_desc, [kb * BN, 0], bar, v_smem.index(slot))
            t_all += cnt
            r += 1
            it = gl.atomic_add(COUNTER, 1)
        mbarrier.wait(q_free.index(0), (r & 1) ^ 1)
        item_smem.index(r & 1).store(gl.full([1], it, gl.int32, id_layout))
        _sync_warps()
        mbarrier.arrive(id_bar.index(0))

    @gluon.jit
    def _online_softmax(s, m_i, l_i, scale, kb, kv_len, BN: gl.constexpr, s_layout: gl.constexpr,
                        FP8: gl.constexpr):
        """Tile kb's weights against the running max: (p, new max, new sum, the old terms' factor). Keys at or
        past kv_len get -inf; a row without a finite logit yet subtracts 0 (its weights stay 0, not NaN), as
        the Triton kernel and SDPA's fused kernels do. In fp8 ``scale`` is per row (the q scales) and the
        weights are 448 times larger (log2 448 in the exponent): e4m3's whole range for P.V, as the Triton
        kernel's fp8 path (the sum carries the same factor, so the output does not)."""
        if (kb + 1) * BN > kv_len:  # only the last kept block can reach past kv_len
            cols = kb * BN + gl.arange(0, BN, layout=gl.SliceLayout(0, s_layout))
            s = gl.where(gl.expand_dims(cols < kv_len, 0), s, float("-inf"))
        if FP8:
            s = s * gl.expand_dims(scale, 1)
        else:
            s = s * scale
        m_new = gl.maximum(m_i, gl.max(s, axis=1))
        m_use = gl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = gl.exp2(m_i - m_use)
        if FP8:
            p = gl.exp2(s - gl.expand_dims(m_use - 8.807354922057604, 1))
        else:
            p = gl.exp2(s - gl.expand_dims(m_use, 1))
        return p, m_new, l_i * alpha + gl.sum(p, axis=1), alpha

    @gluon.jit
    def _tile_scale(row_scale, SK, k_off, kb, FP8: gl.constexpr):
        """The logits' scale of tile kb: per row (fp8: times the q scales), in fp8 also times the tile's k scale."""
        if FP8:
            return row_scale * gl.load(SK + k_off + kb)
        else:
            return row_scale

    @gluon.jit
    def _v_tile(v_smem, slot, FP8: gl.constexpr):
        """P.V's second operand: the slot's [keys, D] tile; in fp8 the slot holds v transposed ([D, keys]: the fp8
        product reads it key-major)."""
        if FP8:
            return v_smem.index(slot).permute((1, 0))
        else:
            return v_smem.index(slot)

    @gluon.jit
    def _out_ptrs(O, o_off, s_on, row0, HALF: gl.constexpr, D: gl.constexpr, o_layout: gl.constexpr):
        rows = row0 + gl.arange(0, HALF, layout=gl.SliceLayout(1, o_layout))
        cols = gl.arange(0, D, layout=gl.SliceLayout(0, o_layout))
        return O + o_off + gl.expand_dims(rows.to(gl.int64) * s_on, 1) + gl.expand_dims(cols, 0)

    @gluon.jit
    def _out_mask(row0, n_q, HALF: gl.constexpr, o_layout: gl.constexpr):
        rows = row0 + gl.arange(0, HALF, layout=gl.SliceLayout(1, o_layout))
        return gl.expand_dims(rows < n_q, 1)

    @gluon.jit
    def _consumer(q_smem, k_smem, v_smem, q_bar, q_free, ready, empty, turn, id_bar, item_smem, ORDER, n_items, QB,
                  H, START, CNT, s_rb, s_rh, s_rq, IDX, s_ib, s_ih, s_iq, s_ik, KVLEN, n_q, O, STATS, s_ob, s_oh,
                  s_on, qk_scale, SQ, SK, SV, n_qg, n_kg, first, last, wg):
        """Warpgroup wg (0 or 1): its 64 rows of each work item the producer hands it (its number in ``item_smem``; a
        number past the last item ends the loop), over this launch's kept tiles. Round j issues Q.K^T of tile j and P.V
        of tile j-1 after the other warpgroup issued its own previous round (warpgroup 0 goes first), waits for the
        logits only, and runs the softmax while P.V runs. ``first``: fresh state, else the previous key range's (output
        times row sum, row max, row sum); ``last``: no statistics to leave. In fp8 (e4m3 q, k, transposed v): the
        logits times each row's q scale and each tile's k scale (SQ: one per 16 rows, SK: one per tile), the
        output times v's channel scales (SV) after the last range only (between ranges it stays unscaled)."""
        STAGES_: gl.constexpr = k_smem.shape[0]
        BN: gl.constexpr = k_smem.shape[1]
        D: gl.constexpr = k_smem.shape[2]
        HALF: gl.constexpr = q_smem.shape[1]
        FP8: gl.constexpr = q_smem.dtype == gl.float8e4nv
        K_INSTR: gl.constexpr = 32 if FP8 else 16  # wgmma's k per instruction: 256 bits of the operand type
        s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                           instr_shape=[16, BN, K_INSTR])
        o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                           instr_shape=[16, D, K_INSTR])
        p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=K_INSTR // 8)
        row_s: gl.constexpr = gl.SliceLayout(1, s_layout)
        row_o: gl.constexpr = gl.SliceLayout(1, o_layout)
        row_1d: gl.constexpr = gl.BlockedLayout([1], [32], [4], [0])
        dtype: gl.constexpr = q_smem.dtype
        q = q_smem.index(wg)
        zero_s = gl.zeros([HALF, BN], gl.float32, s_layout)
        t_all = 0  # tiles consumed so far (the ring's position and phase)
        rnd = 0  # rounds issued so far (the turn barriers' phase)
        r = 0  # items so far (the query barrier's phase)
        mbarrier.wait(id_bar.index(0), 0)
        it = gl.max(item_smem.index(0).load(row_1d), axis=0)
        while it < n_items:
            b, h, blk, start, cnt = _work_item(ORDER, it, QB, H, START, CNT, s_rb, s_rh, s_rq)
            kv_len = gl.load(KVLEN + b)
            bh = b * H + h
            o_off = b * s_ob + h * s_oh
            stats_off = (b * H + h) * 2 * n_q  # as built and tested on the H200 (bh * ... compiles otherwise)
            row0 = blk * 2 * HALF + wg * HALF
            idx_row = IDX + b * s_ib + h * s_ih + blk * s_iq + start * s_ik
            rows_s = row0 + gl.arange(0, HALF, layout=row_s)
            if FP8:  # each row's q scale folds into its logits' scale
                row_scale = qk_scale * gl.load(SQ + bh * n_qg + rows_s // _Q_GROUP, mask=rows_s < n_q, other=1.0)
            else:
                row_scale = qk_scale
            if first != 0:
                m_i = gl.full([HALF], float("-inf"), gl.float32, row_s)
                l_i = gl.zeros([HALF], gl.float32, row_s)
                acc = gl.zeros([HALF, D], gl.float32, o_layout)
            else:  # the previous key range's state (rows past n_q read nothing and are never stored)
                m_i = gl.load(STATS + stats_off + rows_s, mask=rows_s < n_q, other=float("-inf"))
                l_i = gl.load(STATS + stats_off + n_q + rows_s, mask=rows_s < n_q, other=0.0)
                acc = gl.load(_out_ptrs(O, o_off, s_on, row0, HALF, D, o_layout),
                              mask=_out_mask(row0, n_q, HALF, o_layout), other=0.0).to(gl.float32)
                acc = acc * gl.expand_dims(gl.convert_layout(l_i, row_o), 1)
            mbarrier.wait(q_bar.index(0), r & 1)  # after the loads above: they overlap the rows' arrival
            if cnt > 0:
                mbarrier.wait(ready.index(t_all % STAGES_), (t_all // STAGES_) & 1)
                mbarrier.wait(turn.index(wg), (rnd + 1 + wg) & 1)
                s_tok = warpgroup_mma(q, k_smem.index(t_all % STAGES_).permute((1, 0)), zero_s, use_acc=False,
                                      is_async=True)
                mbarrier.arrive(turn.index(1 - wg))
                s = warpgroup_mma_wait(0, deps=[s_tok])
                kb = gl.load(idx_row)
                p, m_i, l_i, alpha = _online_softmax(s, m_i, l_i, _tile_scale(row_scale, SK, bh * n_kg, kb, FP8), kb,
                                                     kv_len, BN, s_layout, FP8)
                acc = acc * gl.expand_dims(gl.convert_layout(alpha, row_o), 1)
                for j in range(1, cnt):
                    slot = (t_all + j) % STAGES_
                    prev = (t_all + j - 1) % STAGES_
                    mbarrier.wait(ready.index(slot), ((t_all + j) // STAGES_) & 1)
                    mbarrier.wait(turn.index(wg), (rnd + j + 1 + wg) & 1)
                    s_tok = warpgroup_mma(q, k_smem.index(slot).permute((1, 0)), zero_s, use_acc=False,
                                          is_async=True)
                    p_op = gl.convert_layout(p.to(dtype), p_layout)
                    acc_tok = warpgroup_mma(p_op, _v_tile(v_smem, prev, FP8), acc, is_async=True)
                    mbarrier.arrive(turn.index(1 - wg))
                    s = warpgroup_mma_wait(1, deps=[s_tok])  # tile j's logits; tile j-1's P.V still running
                    kb = gl.load(idx_row + j * s_ik)
                    p, m_i, l_i, alpha = _online_softmax(s, m_i, l_i, _tile_scale(row_scale, SK, bh * n_kg, kb, FP8),
                                                         kb, kv_len, BN, s_layout, FP8)
                    acc = warpgroup_mma_wait(0, deps=[acc_tok])
                    mbarrier.arrive(empty.index(prev))  # this warpgroup has read tile j-1's slot
                    acc = acc * gl.expand_dims(gl.convert_layout(alpha, row_o), 1)
                mbarrier.arrive(q_free.index(0))  # every Q.K^T of this block is done: the next block's rows
                last_slot = (t_all + cnt - 1) % STAGES_
                p_op = gl.convert_layout(p.to(dtype), p_layout)
                acc_tok = warpgroup_mma(p_op, _v_tile(v_smem, last_slot, FP8), acc, is_async=True)
                acc = warpgroup_mma_wait(0, deps=[acc_tok])
                mbarrier.arrive(empty.index(last_slot))
            else:
                mbarrier.arrive(q_free.index(0))
            t_all += cnt
            rnd += cnt
            r += 1
            # a later range with nothing kept leaves the row as it is; a row with no kept key outputs zeros, a
            # NaN sum divides. (Masks, not branches: a branch nested in one fails to build in Triton 3.6.)
            keep = (first != 0) | (cnt > 0)
            if FP8:  # the last range always writes: it applies v's scales to what the earlier ones left unscaled
                keep = keep | (last != 0)
            # pointers made here, not before the loop: 64 live 64-bit addresses would spill its registers
            o_mask = _out_mask(row0, n_q, HALF, o_layout)
            # one reciprocal a row, not a division an element (a precise fp32 division is a dozen instructions)
            inv_l = gl.convert_layout(gl.where(l_i == 0.0, 1.0, 1.0 / l_i), row_o)
            if FP8:  # v's channel scales, after the last range only
                cols = gl.arange(0, D, layout=gl.SliceLayout(0, o_layout))
                acc = acc * gl.expand_dims(gl.load(SV + bh * D + cols, mask=(cols < D) & (last != 0), other=1.0), 0)
            gl.store(_out_ptrs(O, o_off, s_on, row0, HALF, D, o_layout),
                     (acc * gl.expand_dims(inv_l, 1)).to(O.dtype.element_ty), mask=o_mask & keep)
            # the row statistics for the next range, in a plain 1-d layout (a store of the row-slice layout fails
            # to build, and one from the output's layout issues a store per element)
            rows = row0 + gl.arange(0, HALF, layout=row_1d)
            st_mask = (rows < n_q) & keep & (last == 0)
            gl.store(STATS + stats_off + rows, gl.convert_layout(m_i, row_1d), mask=st_mask)
            gl.store(STATS + stats_off + n_q + rows, gl.convert_layout(l_i, row_1d), mask=st_mask)
            mbarrier.wait(id_bar.index(0), r & 1)  # the next item, or the end
            it = gl.max(item_smem.index(r & 1).load(row_1d), axis=0)

    @gluon.jit
    def _run(Q, K, V, O, STATS, IDX, START, CNT, KVLEN, ORDER, COUNTER, qk_scale, SQ, SK, SV, N_QG, N_KG,
             s_qb, s_qh, s_qn, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn, s_ob, s_oh, s_on,
             s_ib, s_ih, s_iq, s_ik, s_rb, s_rh, s_rq, H, N_Q, QB, N_ITEMS,
             FIRST: gl.constexpr, LAST: gl.constexpr, Q_LAYOUT: gl.constexpr, KV_LAYOUT: gl.constexpr,
             STAGES_: gl.constexpr):
        """A persistent program: work items ``ORDER[i]`` (item = (batch * H + head) * QB + query block) for the
        i it takes from COUNTER (zero before the launch), each a query block's 128 rows over the kept blocks of
        this launch's key range (``IDX[start:start + cnt]`` of its row; START / CNT per row)."""
        dtype: gl.constexpr = Q.dtype.element_ty
        q_smem = gl.allocate_shared_memory(dtype, [2, _BLOCK // 2, _HEAD_DIM], Q_LAYOUT)
        k_smem = gl.allocate_shared_memory(dtype, [STAGES_, _BLOCK, _HEAD_DIM], KV_LAYOUT)
        v_smem = gl.allocate_shared_memory(dtype, [STAGES_, _BLOCK, _HEAD_DIM], KV_LAYOUT)  # fp8: [D, keys]
        ready = gl.allocate_shared_memory(gl.int64, [STAGES_, 1], mbarrier.MBarrierLayout())
        empty = gl.allocate_shared_memory(gl.int64, [STAGES_, 1], mbarrier.MBarrierLayout())
        q_bar = gl.allocate_shared_memory(gl.int64, [1, 1], mbarrier.MBarrierLayout())
        q_free = gl.allocate_shared_memory(gl.int64, [1, 1], mbarrier.MBarrierLayout())
        turn = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
        id_bar = gl.allocate_shared_memory(gl.int64, [1, 1], mbarrier.MBarrierLayout())
        item_smem = gl.allocate_shared_memory(gl.int32, [2, 1], gl.SwizzledSharedLayout(1, 1, 1, order=[0]))
        for i in gl.static_range(STAGES_):
            mbarrier.init(ready.index(i), count=1)
            mbarrier.init(empty.index(i), count=2)  # one arrival per consumer
        mbarrier.init(q_bar.index(0), count=1)
        mbarrier.init(q_free.index(0), count=2)
        mbarrier.init(id_bar.index(0), count=1)
        mbarrier.init(turn.index(0), count=1)
        mbarrier.init(turn.index(1), count=1)
        # partitions take tensors only: Triton makes an int argument equal to 1 a constant, hence to_tensor
        items = (ORDER, gl.to_tensor(N_ITEMS), gl.to_tensor(QB), gl.to_tensor(H), START, CNT, gl.to_tensor(s_rb),
                 gl.to_tensor(s_rh), gl.to_tensor(s_rq), IDX, gl.to_tensor(s_ib), gl.to_tensor(s_ih),
                 gl.to_tensor(s_iq), gl.to_tensor(s_ik), KVLEN, gl.to_tensor(N_Q))
        consumer = (q_smem, k_smem, v_smem, q_bar, q_free, ready, empty, turn, id_bar, item_smem) + items + (
            O, STATS, gl.to_tensor(s_ob), gl.to_tensor(s_oh), gl.to_tensor(s_on), qk_scale, SQ, SK, SV,
            gl.to_tensor(N_QG), gl.to_tensor(N_KG), gl.program_id(0) * 0 + FIRST, gl.program_id(0) * 0 + LAST)
        producer = (Q, K, V, q_smem, k_smem, v_smem, q_bar, q_free, ready, empty, id_bar, item_smem, COUNTER) + items
        producer += (
            gl.to_tensor(s_qb), gl.to_tensor(s_qh), gl.to_tensor(s_qn), gl.to_tensor(s_kb), gl.to_tensor(s_kh),
            gl.to_tensor(s_kn), gl.to_tensor(s_vb), gl.to_tensor(s_vh), gl.to_tensor(s_vn))
        gl.warp_specialize([(_consumer, consumer + (gl.to_tensor(0),)), (_consumer, consumer + (gl.to_tensor(1),)),
                            (_producer, producer)], [4, 1], [240, 24])

    @gluon.jit
    def _bsa_fwd_ws(Q, K, V, O, STATS, IDX, START, CNT, KVLEN, ORDER, COUNTER, qk_scale,
                    s_qb, s_qh, s_qn, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn, s_ob, s_oh, s_on,
                    s_ib, s_ih, s_iq, s_ik, s_rb, s_rh, s_rq, H, N_Q, QB, N_ITEMS,
                    FIRST: gl.constexpr, LAST: gl.constexpr, Q_LAYOUT: gl.constexpr, KV_LAYOUT: gl.constexpr,
                    num_warps: gl.constexpr):
        """bf16 / fp16: ``_run`` with 3 ring slots (no scales: the fp8 arguments are never read)."""
        _run(Q, K, V, O, STATS, IDX, START, CNT, KVLEN, ORDER, COUNTER, qk_scale, STATS, STATS, STATS, 0, 0,
             s_qb, s_qh, s_qn, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn, s_ob, s_oh, s_on,
             s_ib, s_ih, s_iq, s_ik, s_rb, s_rh, s_rq, H, N_Q, QB, N_ITEMS, FIRST, LAST, Q_LAYOUT, KV_LAYOUT, _STAGES)

    @gluon.jit
    def _bsa_fwd_ws_fp8(Q, K, V, O, STATS, IDX, START, CNT, KVLEN, ORDER, COUNTER, qk_scale, SQ, SK, SV, N_QG,
                        N_KG, s_qb, s_qh, s_qn, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn, s_ob, s_oh, s_on,
                        s_ib, s_ih, s_iq, s_ik, s_rb, s_rh, s_rq, H, N_Q, QB, N_ITEMS,
                        FIRST: gl.constexpr, LAST: gl.constexpr, Q_LAYOUT: gl.constexpr, KV_LAYOUT: gl.constexpr,
                        num_warps: gl.constexpr):
        """e4m3 q, k and transposed v (``kernels/quantize.py``'s copies; V's row stride is s_vn) with their scales
        SQ / SK / SV (N_QG / N_KG a head): ``_run`` with 5 ring slots."""
        _run(Q, K, V, O, STATS, IDX, START, CNT, KVLEN, ORDER, COUNTER, qk_scale, SQ, SK, SV, N_QG, N_KG,
             s_qb, s_qh, s_qn, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn, s_ob, s_oh, s_on,
             s_ib, s_ih, s_iq, s_ik, s_rb, s_rh, s_rq, H, N_Q, QB, N_ITEMS, FIRST, LAST, Q_LAYOUT, KV_LAYOUT,
             _STAGES_FP8)


def build_for_sm90(fn, args: tuple, constants: dict) -> dict:
    """Compile the Gluon kernel ``fn`` for sm_90a on this machine, no GPU needed (``args``: ``MockTensor``s for
    pointers, numbers for scalars; ``constants``: constexprs and launch options): its PTX, shared memory, and what
    this Triton's ptxas says of it (registers, spills). Must run outside Triton's CPU interpreter.

    Example::

        info = build_for_sm90(_bsa_fwd_ws, args, dict(FIRST=True, LAST=True, ..., num_warps=4))
        "wgmma.wait_group.sync.aligned 1" in info["ptx"]
    """
    import subprocess
    import tempfile
    from pathlib import Path

    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas
    from triton.compiler import make_backend
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.runtime.jit import create_function_from_signature

    target = GPUTarget("cuda", 90, 32)
    backend = make_backend(target)
    bound, spec, opts = create_function_from_signature(fn.signature, fn.params, backend)(*args, **constants)
    options, sig, cexprs, attrs = fn._pack_args(backend, constants, bound, spec, opts)
    kernel = triton.compile(GluonASTSource(fn, sig, cexprs, attrs), target=target, options=options.__dict__)
    ptx = kernel.asm["ptx"]
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "k.ptx").write_text(ptx)
        # the ptxas this Triton builds sm_90 with (3.9: a newer one than its bundled ptxas)
        res = subprocess.run([str(get_ptxas(90).path), "-arch=sm_90a", "-v", str(Path(tmp) / "k.ptx"), "-o",
                              str(Path(tmp) / "k.cubin")], capture_output=True, text=True, check=True)
    return {"ptx": ptx, "shared": kernel.metadata.shared, "ptxas": res.stderr}


def gluon_unavailable_reason(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: BlockSparseMask,
                             precision: str = "native") -> str | None:
    """Why ``block_sparse_attention_gluon`` cannot run this call here, or None when it can.

    Example::

        gluon_unavailable_reason(q, k, v, mask)   # None for bf16 [B, H, N, 128] on an H100 / H200, blocks of 128
    """
    if precision == "fp8" and os.environ.get("XATTN_GLUON_FP8", "0") in ("", "0"):
        return "precision='fp8': its Hopper fp8 path is built but not yet checked on a GPU (XATTN_GLUON_FP8=1 runs it)"
    if precision not in ("native", "fp8"):
        return f"precision={precision!r}: it computes in the inputs' precision or in fp8 only"
    if q.shape[-1] != HEAD_DIM or q.dtype not in DTYPES:
        return f"head_dim={q.shape[-1]}, dtype={q.dtype}: it needs head_dim {HEAD_DIM} in bf16 / fp16"
    if mask.block_size != BLOCK:
        return f"mask block_size={mask.block_size}: it needs blocks of {BLOCK}"
    for name, t in (("q", q), ("k", k), ("v", v)):
        # bulk copies: unit stride on D, rows and each (batch, head) start 16-byte aligned
        if t.stride(-1) != 1 or t.data_ptr() % 16 or any(
                t.shape[i] > 1 and t.stride(i) * t.element_size() % 16 for i in range(3)):
            return f"{name} strides {tuple(t.stride())} do not suit bulk copies (unit stride on D, 16-byte rows)"
    if GLUON_IMPORT_ERROR is not None:
        return GLUON_IMPORT_ERROR
    if os.environ.get("XATTN_NO_GLUON", "0") not in ("", "0"):
        return "XATTN_NO_GLUON is set"
    if not q.is_cuda or torch.cuda.get_device_capability(q.device)[0] != 9:
        return f"it needs a Hopper GPU (sm_90), inputs are on {q.device}"
    return None


def default_key_splits(k: torch.Tensor) -> int:
    """Key ranges per call: as few as keep one range of one head's keys and values within ``L2_SHARE`` of the
    L2 (1 up to 30 MiB of keys + values per head on an H200, 2 at 544p and 720p in bf16)."""
    l2 = torch.cuda.get_device_properties(k.device).L2_cache_size
    kv_bytes = 2 * k.shape[2] * k.shape[3] * k.element_size()
    return max(1, math.ceil(kv_bytes / (L2_SHARE * l2)))


def split_rows(idx: torch.Tensor, cnt: torch.Tensor, n_kb: int, key_splits: int) -> list[tuple[torch.Tensor, ...]]:
    """Each key range's (start, count) per mask row, int32 ``[B, H, QB]``, the ``n_kb`` key blocks cut into
    ``key_splits`` equal ranges: a row's kept blocks (``idx[..., :cnt]``) are ascending, so range r's blocks
    are the entries from ``start`` on whose index lies below the range's end.

    Example::

        (start, count), = split_rows(mask.kv_indices, mask.kv_counts, 8, 1)   # zeros and mask.kv_counts
    """
    cnt = cnt.to(torch.int32)
    valid = torch.arange(idx.shape[-1], device=idx.device) < cnt[..., None]
    ends = [round((r + 1) * n_kb / key_splits) for r in range(key_splits)]
    below = [torch.zeros_like(cnt)] + [((idx < e) & valid).sum(-1, dtype=torch.int32) for e in ends[:-1]] + [cnt]
    return [(below[r].contiguous(), (below[r + 1] - below[r]).contiguous()) for r in range(key_splits)]


def work_order(count: torch.Tensor, heads: int) -> torch.Tensor:
    """The launch's work items, int32 ``[B * heads * QB]`` (item = (batch * heads + head) * QB + query block):
    head after head, so that the programs running at once read one head's keys and values (the L2 holds them),
    and within a head the rows with the most kept blocks first, so that the launch ends on its shortest rows.
    ``count``: kept blocks per row ``[B, 1 or heads, QB]``.

    Example::

        work_order(torch.tensor([[[1, 3, 2]]]), 1)   # tensor([1, 2, 0])
    """
    b, _, qb = count.shape
    rows = torch.argsort(count.expand(b, heads, qb).reshape(b * heads, qb), dim=1, descending=True, stable=True)
    return (rows + qb * torch.arange(b * heads, device=count.device)[:, None]).reshape(-1).to(torch.int32)


def block_sparse_attention_gluon(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: BlockSparseMask, scale: float | None = None,
    precision: str = "native", *, key_splits: int | None = None, programs: int | None = None,
) -> torch.Tensor:
    """Attention of each query block over its kept key blocks (keys past ``mask.kv_len`` excluded), on Hopper.

    Same contract as ``block_sparse_attention_triton`` (q ``[B, H, N, 128]``, k / v ``[B, H, N_k, 128]``, any
    strides with unit stride on D; returns ``[B, H, N, 128]`` in q's dtype); raises ``ValueError`` naming the
    reason where ``gluon_unavailable_reason`` gives one. ``precision="fp8"`` (with ``XATTN_GLUON_FP8=1`` until it
    is checked on a GPU): both products in e4m3 on the fp8 copies of ``kernels/quantize.py``, as the Triton
    kernel's fp8 path (q one scale per 16 rows, k centred with one per 128 keys, v one per channel, transposed).
    Benchmarks may set ``key_splits`` (key ranges per call,
    default ``default_key_splits(k)``) and ``programs`` (persistent programs, default one per multiprocessor;
    they take the rows of ``work_order`` in turn from a counter, each producer loading its next row while its
    consumers finish the last).
    """
    reason = gluon_unavailable_reason(q, k, v, mask, precision)
    if reason:
        raise ValueError(f"the Gluon attention kernel cannot run this call: {reason}")
    b, h, n, d = q.shape
    idx = mask.kv_indices
    if idx.shape[0] != b or idx.shape[1] not in (1, h) or idx.shape[2] != ceil_div(n, BLOCK) \
            or idx.shape[3] < ceil_div(k.shape[2], BLOCK) or mask.kv_counts.shape != idx.shape[:3] \
            or k.shape != v.shape or k.shape[:2] != (b, h) or k.shape[3] != d:
        raise ValueError(f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} and mask kv_indices "
                         f"{tuple(idx.shape)} / kv_counts {tuple(mask.kv_counts.shape)} do not fit together")
    return launch_gluon_attention(q, k, v, mask, scale, precision, key_splits=key_splits, programs=programs)


def launch_gluon_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: BlockSparseMask, scale: float | None = None,
    precision: str = "native", *, key_splits: int | None = None, programs: int | None = None,
) -> torch.Tensor:
    """``block_sparse_attention_gluon`` without its checks, for a caller that made them already
    (``block_sparse_attention_triton``, which checks the shapes and asks ``gluon_unavailable_reason``).

    Example::

        if gluon_unavailable_reason(q, k, v, mask) is None:
            out = launch_gluon_attention(q, k, v, mask)
    """
    b, h, n, d = q.shape
    n_k = k.shape[2]
    idx = mask.kv_indices.to(device=q.device, dtype=torch.int32)
    if key_splits is not None and key_splits < 1:
        raise ValueError(f"key_splits={key_splits} is not supported; accepted: >= 1")
    if programs is not None and programs < 1:
        raise ValueError(f"programs={programs} is not supported; accepted: >= 1")
    kv_len = mask.kv_len.to(device=q.device, dtype=torch.int32).clamp(max=n_k).contiguous()
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    out = torch.empty((b, h, n, d), dtype=q.dtype, device=q.device)
    kernel, extra = _bsa_fwd_ws, ()
    kind = gl.bfloat16 if q.dtype == torch.bfloat16 else gl.float16
    if precision == "fp8":
        from .quantize import quantize_channels_fp8, quantize_rows
        q, q_scale = quantize_rows(q, ATTENTION_GROUP)
        k, k_scale = quantize_rows(k, BLOCK, kv_len, center=True)  # one k scale per key block
        v, v_scale = quantize_channels_fp8(v, kv_len)  # [B, H, D, N_pad]: rows are channels
        kernel, kind = _bsa_fwd_ws_fp8, gl.float8e4nv
        extra = (q_scale, k_scale, v_scale, q_scale.shape[-1], k_scale.shape[-1])
    splits = default_key_splits(k) if key_splits is None else key_splits  # of the keys the kernel reads
    # the row max and sum that one key range leaves the next (none with a single range)
    stats = torch.empty((b * h, 2, n) if splits > 1 else (1,), dtype=torch.float32, device=q.device)
    from .block_sparse_attention import install_tma_allocator
    install_tma_allocator()  # the producer builds its bulk-copy descriptors on the device
    s_ih = idx.stride(1) if idx.shape[1] > 1 else 0  # a mask head dim of 1 broadcasts over heads
    layouts = {"Q_LAYOUT": gl.NVMMASharedLayout.get_default_for([BLOCK // 2, HEAD_DIM], kind),
               "KV_LAYOUT": gl.NVMMASharedLayout.get_default_for([BLOCK, HEAD_DIM], kind)}
    ranges = split_rows(idx, mask.kv_counts.to(q.device), ceil_div(n_k, BLOCK), splits)  # no device sync
    qb = ceil_div(n, BLOCK)
    n_items = b * h * qb
    grid = (min(n_items, programs or torch.cuda.get_device_properties(q.device).multi_processor_count),)
    counters = torch.zeros(splits, dtype=torch.int32, device=q.device)  # each launch's next work item
    for r, (start, count) in enumerate(ranges):
        s_rh = start.stride(1) if start.shape[1] > 1 else 0
        kernel[grid](
            q, k, v, out, stats, idx, start, count, kv_len, work_order(count, h), counters[r:], scale * LOG2E,
            *extra,
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
            idx.stride(0), s_ih, idx.stride(2), idx.stride(3), start.stride(0), s_rh, start.stride(2), h, n, qb,
            n_items,
            FIRST=r == 0, LAST=r == splits - 1, **layouts, num_warps=4, maxnreg=168)
    return out
