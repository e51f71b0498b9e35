"""The prior: one pre-LayerNorm transformer with rotary positions, over code frames or mel frames.

Inputs are either K code streams `(B, K, T)` (the K embeddings of a frame are summed) or normalised
mel frames `(B, T, F)` through a linear projection; the same blocks serve all four objectives, so the
discrete and continuous routes are compared on one backbone. Attention is
`F.scaled_dot_product_attention` (flash / memory-efficient kernels on a GPU, the fused kernel on a CPU in
fp32), except on a CPU in bf16 for windows of up to 256 frames, where `attend` writes it out as two matmuls and
a softmax: with the fused kernel there, the `small` recipe's training step is about 1.4x slower. `causal` comes
from the objective. Discrete outputs are weight-tied to the code embeddings, one head per codebook.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from musetok.prior.config import PriorConfig


@dataclass
class PriorOutput:
    """hidden: final states after the last LayerNorm, `(B, T, D)` (what the output heads read);
    hidden_states (only when asked for): per layer `(B, T, D)`, the input embedding first, then each
    block's output, the last one after the final LayerNorm (as GPT-2 reports it), so the last entry
    equals `hidden`. Inner blocks' outputs are the un-normalised residual stream."""

    hidden: torch.Tensor
    hidden_states: list[torch.Tensor] | None = None


def rotary_tables(max_len: int, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin `(T, hd)`, each half-table repeated so rotation is two multiplies and an add; the first half of
    sin negated (`apply_rotary` swaps the halves without negating one: the same numbers, one pass fewer)."""
    inv = 1.0 / base ** (torch.arange(0, head_dim, 2).float() / head_dim)
    ang = torch.outer(torch.arange(max_len).float(), inv)  # (T, hd/2)
    sin = ang.sin()
    return torch.cat([ang, ang], dim=-1).cos(), torch.cat([-sin, sin], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x `(..., T, hd)`: rotate pairs (i, i + hd/2) by position-dependent angles (GPT-NeoX layout):
    `(x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin)`, with `sin` as `rotary_tables` gives it."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([x2, x1], dim=-1) * sin


def rotary_matrices(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The rotation of `apply_rotary` as one matrix per position, `(T, hd, hd)`: `apply_rotary(x, cos, sin)` is
    `x @ rot[t]` at each position t (`diag(cos) + swap diag(sin)`, `swap` exchanging the halves). Where `attend`
    writes attention out (`writes_out`), one batched matmul of q and k together is faster than the rotation's
    elementwise passes and their backward: 0.9 against 1.5 ms a layer at 16 x 128 frames, width 192, and the whole
    `small` training step 1.055x faster (1.058x at 8 x 256); level in fp32, 0.98x at 8 x 512, width 256."""
    eye = torch.eye(cos.shape[-1], dtype=cos.dtype, device=cos.device)
    return eye * cos[:, None, :] + eye.roll(cos.shape[-1] // 2, 0) * sin[:, None, :]


WRITTEN_OUT_MAX = 256  # the longest window `attend` writes out on a CPU in bf16


def writes_out(x: torch.Tensor, window: int) -> bool:
    """Whether attention over `window` keys is written out (`attend`), for a tensor `x` of the computation: on a CPU
    in bf16 or fp16 (autocast, or such tensors), up to `WRITTEN_OUT_MAX` keys."""
    low = torch.is_autocast_enabled("cpu") or x.dtype in (torch.bfloat16, torch.float16)
    return x.device.type == "cpu" and low and window <= WRITTEN_OUT_MAX


def attend(q, k, v, attn_mask=None, causal=False, dropout_p=0.0):
    """`F.scaled_dot_product_attention(q, k, v, attn_mask, is_causal=causal and attn_mask is None, dropout_p)`,
    q `(B, H, N, hd)`, k and v `(B, H, T, hd)`, attn_mask bool, broadcastable to `(B, H, N, T)`.

    On a CPU in bf16 (autocast, or bf16 tensors), for windows of up to `WRITTEN_OUT_MAX` frames, it is computed as
    `softmax(q k^T / sqrt(hd)) v`: PyTorch's fused CPU kernel is fast in fp32 but slow in bf16 for short windows.
    A whole training step of the `small` recipe (batch 16 x 128 frames, width 192) took 60 ms instead of 83
    written out (2 cores with AMX); at 8 x 256 it was level, at 8 x 512 (width 256) 239 instead of 168, so longer
    windows keep the fused kernel. Elsewhere the fused kernels run.
    """
    if not writes_out(v, k.shape[-2]):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=causal and attn_mask is None,
                                              dropout_p=dropout_p)
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else v.dtype
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # (B, H, N, T)
    if attn_mask is None and causal:
        n, t = scores.shape[-2:]
        attn_mask = torch.ones(n, t, dtype=torch.bool, device=q.device).tril()  # top-left, as sdpa aligns it
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    # in bf16, as autocast leaves softmax on a CPU: the kernel accumulates in fp32 (its output is the bits of an fp32
    # softmax rounded to bf16) and, forward and backward, it took half the time of an fp32 softmax and its casts
    p = scores.softmax(-1)
    if dropout_p > 0:
        p = F.dropout(p, dropout_p)
    return p @ v


class Attention(nn.Module):
    def __init__(self, cfg: PriorConfig):
        super().__init__()
        self.heads = cfg.heads
        self.dropout = cfg.dropout if cfg.attn_dropout is None else cfg.attn_dropout  # on the attention weights
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=False)
        self.out = nn.Linear(cfg.dim, cfg.dim, bias=False)

    def forward(self, x, cos, sin, attn_mask, causal, q_index=None, rot=None):
        """x `(B, T, D)` -> `(B, T, D)`; with q_index `(B, N)`, only those query positions -> `(B, N, D)`.
        rot: `rotary_matrices(cos, sin)`, to rotate q and k by one matmul (else elementwise)."""
        b, t, d = x.shape
        hd = d // self.heads
        dropout = self.dropout if self.training else 0.0
        if q_index is None:
            qkv = self.qkv(x).view(b, t, 3, self.heads, hd)
            if rot is None:
                # unbind, not slices: its backward stacks the three gradients, where slices' fill zeros and add
                q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, T, hd)
                q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
            else:  # split, not slices: as unbind, its backward joins the gradients (1.02x the `small` step)
                qk, v = qkv.split([2, 1], dim=2)
                q, k = torch.einsum("btjhd,tde->jbhte", qk, rot).unbind(0)  # (B, H, T, hd)
                v = v.squeeze(2).transpose(1, 2)
            y = attend(q, k, v, attn_mask, causal, dropout)
            return self.out(y.transpose(1, 2).reshape(b, t, d))
        w_q, w_kv = self.qkv.weight[:d], self.qkv.weight[d:]
        n = q_index.shape[1]
        xq = x.gather(1, q_index[..., None].expand(b, n, d))  # (B, N, D)
        q = F.linear(xq, w_q).view(b, n, self.heads, hd).transpose(1, 2)  # (B, H, N, hd)
        q = apply_rotary(q, cos[q_index][:, None], sin[q_index][:, None])
        k, v = F.linear(x, w_kv).view(b, t, 2, self.heads, hd).unbind(2)
        if rot is None:
            k = apply_rotary(k.transpose(1, 2), cos, sin)  # (B, H, T, hd)
        else:
            k = torch.einsum("bthd,tde->bhte", k, rot)
        y = attend(q, k, v.transpose(1, 2), attn_mask, dropout_p=dropout)
        return self.out(y.transpose(1, 2).reshape(b, n, d))


class MLP(nn.Module):
    def __init__(self, cfg: PriorConfig):
        super().__init__()
        hidden = int(cfg.dim * cfg.mlp_ratio)
        self.swiglu, self.relu = cfg.mlp == "swiglu", cfg.mlp == "relu"
        if self.swiglu:
            hidden = int(2 * hidden / 3)
            self.gate = nn.Linear(cfg.dim, hidden, bias=False)
        self.up = nn.Linear(cfg.dim, hidden, bias=False)
        self.down = nn.Linear(hidden, cfg.dim, bias=False)

    def forward(self, x):
        h = self.up(x)
        if self.swiglu:
            h = F.silu(self.gate(x)) * h
        elif self.relu:  # 0.4 ms forward and backward at 16 x 128 x 768 in bf16 on 2 cores, against 1.06 for GELU
            h = F.relu(h)
        else:  # exact GELU: on CPU it ran 2x faster than the tanh approximation (fwd + bwd)
            h = F.gelu(h)
        return self.down(h)


class Block(nn.Module):
    def __init__(self, cfg: PriorConfig):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(cfg.dim), nn.LayerNorm(cfg.dim)
        self.attn, self.mlp = Attention(cfg), MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, cos, sin, attn_mask, causal, keep=None, rot=None):
        """keep `(B, T)` bool: compute and return only those positions, `(N, D)` in `x[keep]` order."""
        if keep is None:
            x = x + self.drop(self.attn(self.ln1(x), cos, sin, attn_mask, causal, rot=rot))
        elif causal:  # (padded causal batches) attention for all queries, MLP only where kept
            x = (x + self.drop(self.attn(self.ln1(x), cos, sin, attn_mask, causal, rot=rot)))[keep]
        else:  # bidirectional: queries only at kept positions, padded per row to the longest row
            counts = keep.sum(1)
            n = int(counts.max())
            order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices[:, :n]  # kept positions first
            q_valid = torch.arange(n, device=x.device)[None] < counts[:, None]  # (B, N)
            xq = x.gather(1, order[..., None].expand(-1, -1, x.shape[-1]))
            x = (xq + self.drop(self.attn(self.ln1(x), cos, sin, attn_mask, causal, order, rot)))[q_valid]
        return x + self.drop(self.mlp(self.ln2(x)))


def split_input(cfg: PriorConfig, x) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """A prior input (as `cfg.input_kind` says) -> (codes or None, frames or None)."""
    if cfg.input_kind == "codes":
        return x, None
    if cfg.input_kind == "frames":
        return None, x
    return x


def join_input(cfg: PriorConfig, codes: torch.Tensor | None, frames: torch.Tensor | None):
    """The inverse of `split_input`."""
    return {"codes": codes, "frames": frames}.get(cfg.input_kind, (codes, frames))


def random_quantizer(cfg: PriorConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """BEST-RQ's frozen quantiser, drawn from `cfg.rpq_seed`: projections `(K, F, d)` (Xavier-normal) and
    l2-normalised codebooks `(K, V, d)` (standard normal)."""
    g = torch.Generator().manual_seed(cfg.rpq_seed)
    k, v, d, f = cfg.rpq_codebooks, cfg.rpq_size, cfg.rpq_dim, cfg.frame_dim
    proj = torch.randn(k, f, d, generator=g) * (2.0 / (f + d)) ** 0.5
    return proj, F.normalize(torch.randn(k, v, d, generator=g), dim=-1)


class BandConv(torch.autograd.Function):
    """`F.conv1d(x, w, b, stride, padding)` with the weight gradient as one matmul of the output gradient and the
    unfolded input. The band convolution has few input channels (the stacked frames) over many positions, where
    PyTorch's CPU convolution backward is slow: at the `small` recipe's 2048 frames x 2 channels x 100 bands, 16
    channels out, stride 2, its weight gradient took 9.0 ms against 2.9 written as a matmul (fp32, AVX2, 2 cores):
    about 3% of the 210 ms training step, which timed 1.018x as fast in 30 interleaved rounds (median; the rounds
    ranged 0.88-1.09 on a shared machine). The input gradient, when one is needed, is PyTorch's."""

    @staticmethod
    def forward(ctx, x, w, b, stride: int, padding: int):
        ctx.save_for_backward(x, w)
        ctx.stride, ctx.padding, ctx.has_bias = stride, padding, b is not None
        return F.conv1d(x, w, b, stride=stride, padding=padding)

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = torch.nn.grad.conv1d_input(x.shape, w.to(g.dtype), g, stride=ctx.stride, padding=ctx.padding)
        if ctx.needs_input_grad[1]:
            c_out, c_in, k = w.shape
            cols = F.pad(x, (ctx.padding, ctx.padding)).unfold(-1, k, ctx.stride)  # (N, C_in, P, k)
            cols = cols.permute(1, 3, 0, 2).reshape(c_in * k, -1).to(w.dtype)  # (C_in * k, N * P)
            gw = (g.transpose(0, 1).reshape(c_out, -1).to(w.dtype) @ cols.t()).view_as(w)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g.sum((0, 2)).to(w.dtype)
        return gx, gw, gb, None, None


def band_conv(conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """`conv(x)`, on a CPU through `BandConv` (its weights cast as autocast would cast them); elsewhere as it is."""
    if x.device.type != "cpu":
        return conv(x)
    w, b = conv.weight, conv.bias
    if torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
        x, w, b = x.to(dtype), w.to(dtype), None if b is None else b.to(dtype)
    with torch.autocast(x.device.type, enabled=False):
        return BandConv.apply(x, w, b, conv.stride[0], conv.padding[0])


class FrameConv(nn.Module):
    """A convolutional front-end in the manner of MusicFM / MuQ's, along frequency only: each position's stacked
    frames (S frames of M bands, as channels) -> one convolution along the bands (kernel 7, stride
    `conv_stride`), GELU (and with `conv_layers` > 1 more convolutions along the bands, channels to channels, each
    followed by GELU) -> a linear map to `dim`. Its filters are shared across the bands, so a spectral shape
    learned at one pitch is found at every pitch, while where along the bands it fires (so the pitch) survives in
    the flattened map.
    Positions do not mix: masked frames stay masked. (`conv_layers: 2` took the `small` bf16 step from 50 to 57 ms.)"""

    def __init__(self, cfg: PriorConfig):
        super().__init__()
        if cfg.frame_bands < 1 or cfg.frame_dim % cfg.frame_bands:
            raise ValueError("PriorConfig.frame_bands must be set (from the token store's frames) and divide "
                             f"frame_dim ({cfg.frame_dim})")
        self.bands = cfg.frame_bands
        # conv_harmonics: semitone offsets of each harmonic's band (0.5 -> -12, 3 -> +19, ...); no harmonics: just 0
        self.shifts = [round(12 * math.log2(h)) for h in cfg.conv_harmonics] or [0]
        self.conv = nn.Conv1d(cfg.frame_dim // self.bands * len(self.shifts), cfg.conv_channels, 7,
                              stride=cfg.conv_stride, padding=3)
        self.more = nn.ModuleList(nn.Conv1d(cfg.conv_channels, cfg.conv_channels, 7, padding=3)
                                  for _ in range(cfg.conv_layers - 1))
        positions = (self.bands - 1) // cfg.conv_stride + 1  # (bands + 2 * 3 - 7) // stride + 1
        self.out = nn.Linear(cfg.conv_channels * positions, cfg.dim)

    def stack(self, x: torch.Tensor) -> torch.Tensor:
        """`(N, S, M)` -> `(N, S * H, M)`: channel `s * H + j` at band `b` is frame `s`'s band `b + shifts[j]`
        (zero past either end); with no harmonics, `x` itself."""
        if self.shifts == [0]:
            return x
        m = self.bands

        def shifted(s: int) -> torch.Tensor:
            if abs(s) >= m:
                return torch.zeros_like(x)
            return F.pad(x[..., s:], (0, s)) if s >= 0 else F.pad(x[..., :m + s], (-s, 0))
        return torch.stack([shifted(s) for s in self.shifts], 2).flatten(1, 2)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """`(..., S * M)` -> `(..., dim)`."""
        x = self.stack(frames.reshape(-1, frames.shape[-1] // self.bands, self.bands))
        x = F.gelu(band_conv(self.conv, x))
        for conv in self.more:
            x = F.gelu(band_conv(conv, x))
        return self.out(x.flatten(1)).reshape(*frames.shape[:-1], -1)


class Prior(nn.Module):
    def __init__(self, cfg: PriorConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.uses_codes and cfg.codebook_size < 2:
            raise ValueError("PriorConfig.codebook_size must be set (from the token store)")
        if cfg.uses_frames and cfg.frame_dim < 1:
            raise ValueError("PriorConfig.frame_dim must be set (from the token store's frames)")
        if cfg.reads_codes:  # one extra row per table: the [MASK] code
            self.embed = nn.ModuleList(nn.Embedding(cfg.codebook_size + 1, cfg.dim)
                                       for _ in range(cfg.num_codebooks))
            if cfg.code_mix == "weighted":  # DASB: a learned softmax over codebooks (x K, so it starts as the sum)
                self.code_weights = nn.Parameter(torch.zeros(cfg.num_codebooks))
        if cfg.reads_frames:  # `split`: half the width a frozen map (`proj_fixed`, below), the other half learned
            self.proj_in = nn.Linear(cfg.frame_dim, cfg.dim - cfg.dim // 2 if cfg.input_proj == "split" else cfg.dim)
            if cfg.input_proj == "split":
                self.proj_fixed = nn.Linear(cfg.frame_dim, cfg.dim // 2, bias=False)
            if cfg.frame_conv:  # beside the linear map(s), summed with them
                self.proj_conv = FrameConv(cfg)
        if cfg.predicts_codes:
            k, v = cfg.target_codebooks
            self.head_bias = nn.Parameter(torch.zeros(k, v))
            if not self.tied:  # nothing to tie to: output code embeddings of their own
                self.code_out = nn.Parameter(torch.randn(k, v, cfg.dim) * 0.02)
        if cfg.target_kind == "random" or cfg.aux_random > 0:
            proj, book = random_quantizer(cfg)
            self.register_buffer("rpq_proj", proj)
            self.register_buffer("rpq_codebook", book)
        if cfg.aux_random > 0:  # the random codes' own head, beside the tokenizer codes' one
            self.random_head = nn.Linear(cfg.dim, cfg.rpq_codebooks * cfg.rpq_size)
        if not cfg.predicts_codes or cfg.aux_frames > 0:
            self.head = nn.Linear(cfg.dim, cfg.frame_dim)
        if cfg.aux_frames_layer > 0:  # a lower block's un-normalised output predicts the frames through this
            self.aux_norm = nn.LayerNorm(cfg.dim)
        if cfg.aux_chroma > 0:
            if cfg.chroma_dim < 12:
                raise ValueError("PriorConfig.chroma_dim must be set (from a semitone token store's frames)")
            self.chroma_head = nn.Linear(cfg.dim, cfg.chroma_dim)
        if cfg.aux_bands > 0 and (cfg.frame_bands < 1 or cfg.frame_dim % cfg.frame_bands):
            raise ValueError("PriorConfig.frame_bands must be set (from the token store's frames) and divide "
                             f"frame_dim ({cfg.frame_dim}) to hide bands")
        if cfg.aux_teacher > 0:  # regresses the teacher's targets (its own head)
            self.teacher_head = nn.Linear(cfg.dim, cfg.dim)
        if cfg.aux_contrast > 0:  # SimCLR's projection head: the loss reads its output, the probes the states before
            self.contrast_head = nn.Sequential(nn.Linear(cfg.dim, cfg.dim), nn.GELU(),
                                               nn.Linear(cfg.dim, cfg.contrast_dim))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.dim)
        if cfg.decoder_layers:  # MAE's mask token: what a masked position is where it joins the upper blocks
            self.mask_embed = nn.Parameter(torch.randn(cfg.dim) * 0.02)
        cos, sin = rotary_tables(cfg.max_len, cfg.dim // cfg.heads, cfg.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init)
        # Projections that write into the residual stream start smaller, std 0.02 / sqrt(2 * layers) (GPT-2,
        # nanoGPT), so the stream's variance does not grow with depth at init.
        for block in self.blocks:
            for proj in (block.attn.out, block.mlp.down):
                nn.init.normal_(proj.weight, std=0.02 / (2 * cfg.layers) ** 0.5)
        if cfg.input_proj in ("fixed", "split"):  # reads frames (the config checks it)
            # A frozen random orthogonal map (an isometry of the frames, up to scale): the input layer keeps every
            # direction of the frames at the conditioning it has there, whatever the objective trains the blocks
            # for. Scaled so each output has the learned init's spread (std 0.02 * sqrt(frame_dim)).
            frozen = self.proj_in if cfg.input_proj == "fixed" else self.proj_fixed
            nn.init.orthogonal_(frozen.weight, gain=0.02 * max(frozen.weight.shape) ** 0.5)
            frozen.requires_grad_(False)
        if cfg.frame_conv and cfg.conv_out_fixed:
            self.proj_conv.out.requires_grad_(False)
        if cfg.aux_teacher > 0:  # data2vec: the teacher starts as the student and follows it by EMA (`update_teacher`)
            teacher = Prior(replace(cfg, aux_teacher=0.0))
            teacher.load_state_dict({k: v for k, v in self.state_dict().items() if not k.startswith("teacher_head.")})
            self.teacher = teacher.requires_grad_(False)  # a submodule: saved, resumed and moved with the prior

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    @property
    def tied(self) -> bool:
        """Output code embeddings are the input ones (the prior reads the codes it predicts)."""
        return self.cfg.reads_codes and self.cfg.target_kind == "codes"

    @property
    def mask_id(self) -> int:
        return self.cfg.codebook_size

    @property
    def layer_names(self) -> list[str]:
        return ["input"] + [f"layer{i + 1}" for i in range(self.cfg.layers)]

    def embed_inputs(self, x) -> torch.Tensor:
        """The input as `cfg.input_kind` says: codes `(B, K, T)` long, frames `(B, T, F)` float, or the pair
        `(codes, frames)` -> `(B, T, D)` (code embeddings and projected frames are summed)."""
        codes, frames = split_input(self.cfg, x)
        h = None
        if codes is not None:
            if self.cfg.code_mix == "weighted":
                w = torch.softmax(self.code_weights, 0) * len(self.embed)
                h = sum(w[k] * emb(codes[:, k]) for k, emb in enumerate(self.embed))
            else:
                h = sum(emb(codes[:, k]) for k, emb in enumerate(self.embed))
        if frames is not None:
            f = self.proj_in(frames)
            if self.cfg.input_proj == "split":  # frozen half first, learned half after
                f = torch.cat([self.proj_fixed(frames), f], dim=-1)
            if self.cfg.frame_conv:
                f = f + self.proj_conv(frames)
            h = f if h is None else h + f
        return h

    def forward(self, x, valid: torch.Tensor | None = None, output_hidden_states: bool = False,
                keep: torch.Tensor | None = None, drop: torch.Tensor | None = None) -> PriorOutput:
        """x: codes `(B, K, T)`, frames `(B, T, F)` or `(codes, frames)`, as `cfg.input_kind` says, T <= max_len;
        valid: `(B, T)` bool, False on padding.

        keep: `(B, T)` bool. When only some positions are scored (masked objectives), the last block's
        MLP runs on those alone (~12% less matmul work at a 30% mask rate) and `hidden` is `(N, D)`
        for the kept positions, in `x[keep]` order.

        drop: `(B, T)` bool, the masked positions, for a prior with `decoder_layers` (MAE): the blocks below the
        last `decoder_layers` read only the other positions (what `x` holds at the dropped ones is never read);
        the dropped ones join above them as the mask embedding. `hidden_states` then hold zeros at the dropped
        positions up to the first block that reads them.
        """
        states = [] if output_hidden_states else None
        if drop is None:
            h, first = self.embed_inputs(x), 0  # (B, T, D)
            t = self._check_length(h.shape[1])
            if states is not None:
                states.append(h)
        else:  # MAE: the lower blocks on the kept positions, then every position with the mask embedding
            h, first = self._encode_visible(x, valid, drop, states), len(self.blocks) - self.cfg.decoder_layers
            t = h.shape[1]
        cos, sin = self._rotary(t, h)
        rot = rotary_matrices(cos, sin) if writes_out(h, t) else None  # once for all blocks
        attn_mask = None
        # (under torch.compile a given mask is used as it is: testing it would break the graph)
        if valid is not None and (torch.compiler.is_compiling() or not bool(valid.all())):
            attn_mask = valid[:, None, None, :]  # (B, 1, 1, T): keys that may be attended to
            if self.cfg.causal:
                attn_mask = attn_mask & torch.ones(t, t, dtype=torch.bool, device=h.device).tril()
        last = len(self.blocks) - 1
        for i in range(first, len(self.blocks)):
            h = self.blocks[i](h, cos, sin, attn_mask, self.cfg.causal, keep if i == last else None, rot)
            if states is not None and i < last:
                states.append(h)
        h = self.norm(h)
        if states is not None:
            states.append(h)
        return PriorOutput(h, states)

    def _check_length(self, t: int) -> int:
        if t > self.cfg.max_len:
            raise ValueError(f"sequence of {t} frames is longer than the prior's max_len {self.cfg.max_len}")
        return t

    def _rotary(self, t: int, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin `(T, hd)`; under autocast in its dtype, so q and k stay in bf16 through the rotation."""
        cos, sin = self.rope_cos[:t], self.rope_sin[:t]
        if torch.is_autocast_enabled(h.device.type):
            dtype = torch.get_autocast_dtype(h.device.type)
            cos, sin = cos.to(dtype), sin.to(dtype)
        return cos, sin

    def _encode_visible(self, x, valid, drop, states: list | None) -> torch.Tensor:
        """`forward`'s lower blocks with `drop` (MAE) -> `(B, T, D)`, what the upper blocks read. The kept positions
        of each row are gathered to the front (in time order, rows padded to the longest, padding never attended
        to) and run through the front-end and the lower blocks with their own rotary positions; then scattered
        back, the mask embedding at the dropped positions. Appends each lower layer to `states`, zeros where
        dropped."""
        if not self.cfg.decoder_layers:
            raise ValueError("drop: this prior reads every position in every block (model.decoder_layers is 0)")
        codes, frames = split_input(self.cfg, x)
        b, t = drop.shape
        self._check_length(t)
        seen = ~drop if valid is None else valid & ~drop
        counts = seen.sum(1)
        n = int(counts.max())
        order = torch.sort((~seen).to(torch.int8), dim=1, stable=True).indices[:, :n]  # (B, n): seen ones first
        codes = None if codes is None else codes.gather(2, order[:, None].expand(-1, codes.shape[1], -1))
        frames = None if frames is None else frames.gather(1, order[..., None].expand(-1, -1, frames.shape[-1]))
        h = self.embed_inputs(join_input(self.cfg, codes, frames))  # (B, n, D): the front-end on the seen ones
        filled = torch.arange(n, device=h.device)[None] < counts[:, None]  # (B, n): not row padding
        enc_mask = None if bool(filled.all()) else filled[:, None, None, :]
        index = order[..., None].expand(-1, -1, h.shape[-1])

        def unpack(hv):  # (B, n, D) -> (B, T, D), zeros where dropped
            return torch.where(seen[..., None], hv.new_zeros(b, t, hv.shape[-1]).scatter(1, index, hv), 0.0)

        if states is not None:
            states.append(unpack(h))
        cos, sin = self._rotary(t, h)
        cos, sin = cos[order][:, None], sin[order][:, None]  # (B, 1, n, hd): each seen position's own angles
        for block in self.blocks[:len(self.blocks) - self.cfg.decoder_layers]:
            h = block(h, cos, sin, enc_mask, False)
            if states is not None:
                states.append(unpack(h))
        full = h.new_zeros(b, t, h.shape[-1]).scatter(1, index, h)
        return torch.where(seen[..., None], full, self.mask_embed.to(h.dtype))

    def code_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Normalised states `(..., D)` -> logits `(..., K, V)`, tied to the code embeddings when the prior
        reads the codes it predicts, its own output embeddings otherwise."""
        if self.tied:
            w = torch.stack([emb.weight[: self.cfg.codebook_size] for emb in self.embed])  # (K, V, D)
        else:
            w = self.code_out
        return torch.einsum("...d,kvd->...kv", h, w) + self.head_bias

    @torch.no_grad()
    def random_codes(self, frames: torch.Tensor) -> torch.Tensor:
        """BEST-RQ targets: normalised frames `(..., F)` -> codes `(..., K)`, the nearest (cosine) entry of each
        frozen random codebook to the frozen random projection of the frame."""
        z = F.normalize(torch.einsum("...f,kfd->...kd", frames.float(), self.rpq_proj), dim=-1)  # (..., K, d)
        return torch.einsum("...kd,kvd->...kv", z, self.rpq_codebook).argmax(-1)

    def random_logits(self, h: torch.Tensor) -> torch.Tensor:
        """`aux_random`: normalised states `(..., D)` -> logits `(..., K, V)` over the random-projection codes."""
        return self.random_head(h).unflatten(-1, (self.cfg.rpq_codebooks, self.cfg.rpq_size))

    def chroma_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Normalised states `(..., D)` -> chroma logits `(..., S, 12)`, one distribution per stacked mel frame."""
        return self.chroma_head(h).unflatten(-1, (-1, 12))

    @torch.no_grad()
    def update_teacher(self) -> None:
        """`aux_teacher`: teacher <- decay x teacher + (1 - decay) x student, parameter by parameter."""
        student = dict(self.named_parameters())
        for name, p in self.teacher.named_parameters():
            p.lerp_(student[name], 1.0 - self.cfg.teacher_decay)

    @torch.no_grad()
    def teacher_targets(self, x, valid: torch.Tensor | None = None) -> torch.Tensor:
        """`aux_teacher`: the clean input (as `forward` reads it) -> `(B, T, D)` float targets, the mean of the
        teacher's top `teacher_layers` outputs, each normalised over the valid frames per sequence and channel
        (data2vec's instance norm)."""
        states = self.teacher(x, valid, output_hidden_states=True).hidden_states[-self.cfg.teacher_layers:]
        w = torch.ones(states[0].shape[:2], device=states[0].device) if valid is None else valid.float()
        w = w[..., None]
        n = w.sum(1, keepdim=True).clamp_min(1.0)
        out = torch.zeros_like(states[0], dtype=torch.float32)
        for s in states:
            s = s.float()
            mean = (s * w).sum(1, keepdim=True) / n
            var = ((s - mean) ** 2 * w).sum(1, keepdim=True) / n
            out += (s - mean) * torch.rsqrt(var + 1e-5)
        return out / len(states)

    def frame_prediction(self, h: torch.Tensor) -> torch.Tensor:
        """Normalised states `(..., D)` -> frames `(..., F)`."""
        return self.head(h)
