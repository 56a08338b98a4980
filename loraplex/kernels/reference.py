"""Pure-torch references for every kernel in this package.

They define the semantics the Triton kernels must match, run the engine on CPU, and serve as the
ground truth in tests. Clarity over speed: loops over sequences are fine here.
"""

from __future__ import annotations

import torch

FP8_DTYPE = torch.float8_e4m3fn


def store_kv_ref(
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> None:
    """Write new tokens' keys and values into the paged cache.

    key, value: [T, Hkv, D]; k_cache, v_cache: [num_blocks, block_size, Hkv, D];
    slot_mapping: [T] int64, slot = block_id * block_size + offset, -1 = padding (skipped).
    With an fp8 cache, stores key / k_scale (and value / v_scale) as float8_e4m3fn.
    """
    valid = slot_mapping >= 0
    slots = slot_mapping[valid]
    k, v = key[valid], value[valid]
    if k_cache.dtype == FP8_DTYPE:
        k = quantize_fp8_ref(k, k_scale)
        v = quantize_fp8_ref(v, v_scale)
    k_cache.view(-1, *k_cache.shape[2:])[slots] = k.to(k_cache.dtype)
    v_cache.view(-1, *v_cache.shape[2:])[slots] = v.to(v_cache.dtype)


def quantize_fp8_ref(x: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """x / scale, clamped to the float8_e4m3fn range and rounded to it (nearest even)."""
    x = x.float() / (scale.float() if scale is not None else 1.0)
    finfo = torch.finfo(FP8_DTYPE)
    return x.clamp(finfo.min, finfo.max).to(FP8_DTYPE)


def gather_context(
    cache: torch.Tensor, block_table: torch.Tensor, context_len: int, scale: torch.Tensor | None
) -> torch.Tensor:
    """The first `context_len` cached tokens of one sequence, [context_len, Hkv, D] in float32."""
    block_size = cache.shape[1]
    num_blocks = (context_len + block_size - 1) // block_size
    blocks = cache[block_table[:num_blocks].long()]
    tokens = blocks.reshape(-1, *cache.shape[2:])[:context_len].float()
    if cache.dtype == FP8_DTYPE and scale is not None:
        tokens = tokens * scale.float()
    return tokens


def paged_attention_ref(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    *,
    scale: float,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """Causal attention of variable-length query segments over each sequence's paged context.

    query: [T, Hq, D], the queries of all sequences back to back; segment s is
    query[cu_seqlens_q[s]:cu_seqlens_q[s+1]] and holds the *last* q_len tokens of a sequence
    whose cache (already including them) has context_lens[s] tokens. Query i of the segment sits
    at position p = context_len - q_len + i and attends to keys at positions j with j <= p
    (and p - j < sliding_window when a window is set). Decode is the case q_len == 1; chunked
    prefill and cached prefixes are q_len < context_len.
    block_tables: [S, max_blocks] int32; context_lens: [S] int32; cu_seqlens_q: [S+1] int32.
    GQA: query head h reads KV head h // (Hq // Hkv). Returns [T, Hq, D] in query's dtype.
    """
    num_heads = query.shape[1]
    num_kv_heads = k_cache.shape[2]
    group = num_heads // num_kv_heads
    out = torch.empty_like(query)
    cu = cu_seqlens_q.tolist()
    lens = context_lens.tolist()
    for s, context_len in enumerate(lens):
        start, end = cu[s], cu[s + 1]
        q_len = end - start
        if q_len == 0:
            continue
        k = gather_context(k_cache, block_tables[s], context_len, k_scale)
        v = gather_context(v_cache, block_tables[s], context_len, v_scale)
        k = k.repeat_interleave(group, dim=1).transpose(0, 1)  # [Hq, L, D]
        v = v.repeat_interleave(group, dim=1).transpose(0, 1)
        q = query[start:end].float().transpose(0, 1)  # [Hq, q_len, D]
        scores = torch.matmul(q, k.transpose(1, 2)) * scale  # [Hq, q_len, L]
        q_pos = torch.arange(context_len - q_len, context_len).unsqueeze(1)
        k_pos = torch.arange(context_len).unsqueeze(0)
        allowed = k_pos <= q_pos
        if sliding_window is not None:
            allowed &= (q_pos - k_pos) < sliding_window
        scores = scores.masked_fill(~allowed.to(scores.device), float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        out[start:end] = torch.matmul(probs, v).transpose(0, 1).to(query.dtype)
    return out


def lora_shrink_ref(
    x: torch.Tensor,
    lora_a: tuple[torch.Tensor, ...],
    token_lora: torch.Tensor,
    out: torch.Tensor,
) -> None:
    """First LoRA product, per output slice i and token t with slot s = token_lora[t] >= 0:

        out[i, t] = lora_a[i][s] @ x[t]        (float32 accumulation, stored in out's dtype)

    x: [T, in]; lora_a: one [num_slots, R, in] per slice; token_lora: [T] int32, -1 = base model;
    out: [num_slices, T, R]. Rows of base-model tokens are left untouched.
    """
    for slot in _active_slots(token_lora):
        rows = (token_lora == slot).nonzero().squeeze(1)
        for i, a in enumerate(lora_a):
            out[i, rows] = (x[rows].float() @ a[slot].float().t()).to(out.dtype)


def lora_expand_ref(
    y: torch.Tensor,
    lora_b: tuple[torch.Tensor, ...],
    token_lora: torch.Tensor,
    out: torch.Tensor,
    slice_offsets: tuple[int, ...],
) -> None:
    """Second LoRA product, added in place into the columns of each output slice:

        out[t, off_i : off_i + out_i] += lora_b[i][s] @ y[i, t]     for s = token_lora[t] >= 0

    y is rounded to lora_b's dtype first (as a model-dtype LoRA forward rounds its
    intermediate), the product accumulates in float32 and the sum is rounded to out's dtype.
    y: [num_slices, T, R]; lora_b: one [num_slots, out_i, R] per slice; out: [T, N].
    """
    for slot in _active_slots(token_lora):
        rows = (token_lora == slot).nonzero().squeeze(1)
        for i, (b, offset) in enumerate(zip(lora_b, slice_offsets, strict=True)):
            delta = y[i, rows].to(b.dtype).float() @ b[slot].float().t()
            cols = slice(offset, offset + b.shape[1])
            out[rows, cols] = (out[rows, cols].float() + delta).to(out.dtype)


def _active_slots(token_lora: torch.Tensor) -> list[int]:
    return [slot for slot in torch.unique(token_lora).tolist() if slot >= 0]


def quantize_fp8_per_channel_ref(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantise weights to float8_e4m3fn with one scale per output channel (row).

    weight: [..., N, K]. Returns (q [..., N, K] float8_e4m3fn, scale [..., N] float32) with
    weight ~= q * scale[..., None]; each row's largest magnitude maps to the fp8 maximum.
    """
    amax = weight.float().abs().amax(dim=-1)
    scale = (amax / torch.finfo(FP8_DTYPE).max).clamp(min=torch.finfo(torch.float32).tiny)
    return quantize_fp8_ref(weight, scale.unsqueeze(-1)), scale


def fused_moe_ref(
    hidden: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    *,
    w13_scale: torch.Tensor | None = None,
    w2_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mixture-of-experts MLP of every token over its routed experts:

        for each token t and choice k, with e = topk_ids[t, k]:
            gate, up = (w13[e] @ hidden[t]).split(I)               (float32 sums)
            act = (silu(gate) * up).to(hidden.dtype)
            part[t, k] = (topk_weights[t, k] * (w2[e] @ act)).to(hidden.dtype)
        out[t] = sum_k part[t, k]                                  (float32 sum, rounded once)

    hidden: [T, H] fp16/bf16/fp32; w13: [E, 2 * I, H] (gate rows, then up rows) and w2:
    [E, H, I], in hidden's dtype or float8_e4m3fn with w13_scale [E, 2 * I] and w2_scale
    [E, H] (float32, one per output channel: w = q * scale); topk_weights: [T, K] (used in
    float32); topk_ids: [T, K] integer. A choice whose expert id lies outside [0, E) adds
    nothing. Returns [T, H] in hidden's dtype.
    """
    num_experts, double_inter, _ = w13.shape
    inter = double_inter // 2
    parts = torch.zeros(*topk_ids.shape, w2.shape[1], dtype=hidden.dtype, device=hidden.device)
    weights = topk_weights.float()
    for expert in range(num_experts):
        tokens, choices = (topk_ids == expert).nonzero(as_tuple=True)
        if tokens.numel() == 0:
            continue
        gate_up = hidden[tokens].float() @ _dequantized(w13[expert], w13_scale, expert).t()
        act = (torch.nn.functional.silu(gate_up[:, :inter]) * gate_up[:, inter:]).to(hidden.dtype)
        down = act.float() @ _dequantized(w2[expert], w2_scale, expert).t()
        parts[tokens, choices] = (down * weights[tokens, choices, None]).to(hidden.dtype)
    return parts.float().sum(dim=1).to(hidden.dtype)


def _dequantized(weight: torch.Tensor, scale: torch.Tensor | None, expert: int) -> torch.Tensor:
    if scale is None:
        return weight.float()
    return weight.float() * scale[expert].float().unsqueeze(-1)


def align_by_expert_ref(
    topk_ids: torch.Tensor, num_experts: int, block_m: int, num_blocks: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Group the T * K assignments of `topk_ids` [T, K] (numbered t * K + k) by expert into
    blocks of `block_m` rows, each expert's group padded to a multiple of `block_m`.

    Returns (sorted_ids [num_blocks * block_m] int32: assignment ids, experts in ascending order,
    each expert's in ascending order, padding rows = T * K; block_experts [num_blocks] int32: the
    expert of each block, -1 past the used rows; num_padded [1] int32: rows in use). Ids outside
    [0, num_experts) are in no block. `num_blocks` must cover the padded rows.
    """
    device = topk_ids.device
    flat = topk_ids.reshape(-1).to(torch.int64)
    num_assignments = flat.shape[0]
    keys = torch.where((flat >= 0) & (flat < num_experts), flat, num_experts)
    # scatter_add rather than bincount: bincount on CUDA reads the maximum back to the host.
    counts = torch.zeros(num_experts + 1, dtype=torch.int64, device=device)
    counts.scatter_add_(0, keys, torch.ones_like(keys))
    counts = counts[:num_experts]
    padded = (counts + block_m - 1) // block_m * block_m
    padded_ends = torch.cumsum(padded, 0)
    sorted_keys, order = torch.sort(keys, stable=True)
    expert_of_row = sorted_keys.clamp(max=num_experts - 1)
    first_row = torch.cumsum(counts, 0) - counts  # where each expert starts among sorted keys
    rank_in_expert = torch.arange(num_assignments, device=device) - first_row[expert_of_row]
    capacity = num_blocks * block_m
    # Invalid assignments scatter into one spare slot past the end, sliced away below.
    dest = torch.where(
        sorted_keys < num_experts,
        padded_ends[expert_of_row] - padded[expert_of_row] + rank_in_expert,
        capacity,
    )
    sorted_ids = torch.full((capacity + 1,), num_assignments, dtype=torch.int32, device=device)
    sorted_ids.scatter_(0, dest, order.to(torch.int32))
    block_starts = torch.arange(num_blocks, dtype=torch.int64, device=device) * block_m
    block_experts = torch.searchsorted(padded_ends, block_starts, right=True, out_int32=True)
    block_experts = torch.where(block_experts < num_experts, block_experts, -1)
    return sorted_ids[:capacity], block_experts, padded_ends[-1:].to(torch.int32)


def rms_norm_ref(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """transformers' RMSNorm (float32 statistics, cast back, times the weight); with
    `residual`, of `x + residual` added in the activation dtype, returned with that sum."""
    if residual is not None:
        x = x + residual
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    out = weight * h.to(x.dtype)
    return out if residual is None else (out, x)


def rotary_embedding_ref(
    positions: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' `x * cos + rotate_half(x) * sin` for q [T, Hq, D] and k [T, Hk, D]."""
    c = cos[positions].to(q.dtype).unsqueeze(1)
    s = sin[positions].to(q.dtype).unsqueeze(1)

    def rotate_half(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((-x2, x1), dim=-1)

    return q * c + rotate_half(q) * s, k * c + rotate_half(k) * s


def silu_and_mul_ref(x: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up of the fused gate_up output [T, 2 * I]."""
    gate, up = x.chunk(2, dim=-1)
    return torch.nn.functional.silu(gate) * up
