"""`pool_qkv_attention`'s autograd: one Function around the two ops' custom ops, keeping only qkv."""
from __future__ import annotations

import torch


class PoolQKVAttention(torch.autograd.Function):
    """Forward: the two custom ops. Saved: qkv, the parameters, the tables (rel_pos_t None on 2-D
    grids), lse. Backward:
    pool_qkv (recompute q, k, v) -> pool_attention_backward -> pool_qkv_backward."""

    @staticmethod
    def forward(ctx, qkv, wq, wk, wv, gq, gk, gv, bq, bk, bv, rel_pos_h, rel_pos_w, rel_pos_t,
                qkv_args, attn_args, window=None):
        ops = torch.ops.fastmvit
        q, k, v = ops.pool_qkv(qkv, wq, wk, wv, gq, gk, gv, bq, bk, bv, *qkv_args)
        out, lse = ops.pool_attention(q, k, v, rel_pos_h, rel_pos_w, *attn_args, rel_pos_t, window)
        ctx.save_for_backward(qkv, wq, wk, wv, gq, gk, gv, bq, bk, bv, rel_pos_h, rel_pos_w, rel_pos_t, lse)
        ctx.qkv_args, ctx.attn_args, ctx.window = qkv_args, attn_args, window
        return out

    @staticmethod
    def backward(ctx, dout):
        qkv, wq, wk, wv, gq, gk, gv, bq, bk, bv, rel_pos_h, rel_pos_w, rel_pos_t, lse = ctx.saved_tensors
        ops = torch.ops.fastmvit
        q, k, v = ops.pool_qkv(qkv, wq, wk, wv, gq, gk, gv, bq, bk, bv, *ctx.qkv_args)
        grads = ops.pool_attention_backward(dout, q, k, v, rel_pos_h, rel_pos_w, lse, *ctx.attn_args, rel_pos_t,
                                            ctx.window)
        del q, k, v
        # [d qkv, d wq, d wk, d wv, d gq, d gk, d gv, d bq, d bk, d bv]
        qkv_grads = ops.pool_qkv_backward(grads[0], grads[1], grads[2], qkv, wq, wk, wv, gq, gk, gv,
                                          *ctx.qkv_args)
        d_th, d_tw = (grads[3], grads[4]) if rel_pos_h is not None else (None, None)
        d_tt = grads[5] if rel_pos_t is not None else None
        return (*qkv_grads, d_th, d_tw, d_tt, None, None, None)
