import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from musetok.prior.config import PriorConfig
from musetok.prior.data import Batch
from musetok.prior.masking import band_mask, corrupt_codes, corrupt_frames, row_generators, span_mask
from musetok.prior.model import WRITTEN_OUT_MAX, Prior, apply_rotary, attend, rotary_matrices, rotary_tables
from musetok.prior.objectives import compute_loss, contrastive, decorrelation
from musetok.shared.config import ConfigError, load_config
from tests.conftest import TINY_PRIOR


def cfg(**kw) -> PriorConfig:
    base = dict(dim=32, layers=2, heads=2, max_len=64, codebook_size=16, num_codebooks=2, frame_dim=12)
    base.update(kw)
    return PriorConfig(**base)


def heard(m: Prior, batch: Batch, bands: bool = False) -> tuple[torch.Tensor, ...]:
    """What `compute_loss` feeds a masked prior reading frames: its corrupted frames `(B, T, F)` and the mask
    `(B, T)`, from the same per-row draws in the same order. `bands`: with `aux_bands`, the frames with their hidden
    bands zeroed, the mask, the frames with hidden bands `(B, T)` and the hidden elements `(B, T, F)`."""
    gens = row_generators(batch.seeds)
    mask = span_mask(batch.lengths, batch.length, m.cfg.mask_rate, m.cfg.mask_span, gens)
    f_in = corrupt_frames(batch.frames, mask, batch.lengths, gens, m.cfg.mask_fill)
    if not bands:
        return f_in, mask
    c = m.cfg
    banded, hidden = band_mask(mask, batch.lengths, c.frame_bands, c.band_mask_rate, c.band_mask_width, gens)
    hidden = hidden.repeat(1, 1, c.frame_dim // c.frame_bands)
    return f_in.masked_fill(hidden, 0.0), mask, banded, hidden


def frames_batch(lengths: list[int]) -> Batch:
    """Two rows of 20 frames (12 per frame) with 2 codebooks of 16 codes, drawn from the global RNG, codes first."""
    codes, frames = torch.randint(0, 16, (2, 2, 20)), torch.randn(2, 20, 12)
    return Batch(codes, frames, torch.tensor(lengths), torch.arange(2))


def with_and_without(m: Prior, batch: Batch, key: str):
    """`compute_loss` with the weight `key` as set, and the loss (detached) with that weight at 0, restored after."""
    out = compute_loss(m, batch)
    weight = getattr(m.cfg, key)
    setattr(m.cfg, key, 0.0)
    try:
        return out, compute_loss(m, batch).loss.detach()
    finally:
        setattr(m.cfg, key, weight)


def test_span_mask_policy():
    lengths = torch.tensor([400, 250, 37, 0])
    m = span_mask(lengths, 400, rate=0.3, span=5, gens=row_generators(torch.arange(4)))
    assert m.shape == (4, 400)
    for i, n in enumerate(lengths.tolist()):
        assert not m[i, n:].any()  # never in padding
        if n == 0:
            continue
        frac = m[i, :n].float().mean().item()
        assert 0.15 <= frac <= 0.35, frac
        # spans: every run of masked frames is at least `span` long
        runs, cur = [], 0
        for v in m[i, :n].tolist() + [False]:
            if v:
                cur += 1
            elif cur:
                runs.append(cur)
                cur = 0
        assert min(runs) >= 5


def test_short_sequences_are_not_over_masked():
    """Sequences shorter than a few spans get shorter spans: never more than half masked, about `rate` on average
    (one full 5-frame span used to mask 5 of 6 frames)."""
    lengths = torch.arange(2, 65)
    m = span_mask(lengths, 64, rate=0.3, span=5, gens=row_generators(torch.arange(len(lengths))))
    frac = m.sum(1).float() / lengths.float()
    assert (m.sum(1) >= 1).all()
    assert frac.max() <= 0.5, dict(zip(lengths.tolist(), frac.tolist()))
    assert 0.2 <= frac[lengths >= 4].mean() <= 0.35


def _fit(objective: str, data, steps: int = 80, **kw) -> tuple[float, float]:
    """Train a tiny prior for `steps` on batches from `data(g)`; returns (last loss, masked/next accuracy)."""
    torch.manual_seed(0)
    model = Prior(cfg(objective=objective, layers=1, max_len=32, **kw))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    for step in range(steps):
        x = data(g)
        codes, frames = (x, None) if x.dtype == torch.long else (None, x)
        o = compute_loss(model, Batch(codes, frames, torch.full((16,), 32), torch.arange(16) + 16 * step))
        opt.zero_grad()
        o.loss.backward()
        opt.step()
    return o.loss.item(), o.correct / max(o.targets * model.cfg.num_codebooks, 1)


def random_codes(g):
    return torch.randint(0, 16, (16, 2, 32), generator=g)


def successor_codes(g):  # each code is the previous one plus 1 (mod 16): the next code is predictable
    start = torch.randint(0, 16, (16, 2, 1), generator=g)
    return (start + torch.arange(32)) % 16


def test_ar_predicts_the_next_code_not_the_current_one():
    """With the target shifted by one, i.i.d. codes stay unpredictable (chance, 1/16) while successor codes are
    learnt. With a shift of 0 the causal model would copy its input and get i.i.d. codes right too."""
    _, acc_random = _fit("ar", random_codes)
    _, acc_successor = _fit("ar", successor_codes)
    assert acc_random < 0.15, acc_random
    assert acc_successor > 0.9, acc_successor


def test_next_frames_predicts_ahead():
    """i.i.d. Gaussian frames: nothing can predict frame t + n from frames <= t, so L1 stays near E|x| = 0.8;
    a model that saw its target (shift 0) would drive it towards 0."""
    loss, _ = _fit("next_frames", lambda g: torch.randn(16, 32, 12, generator=g))
    assert loss > 0.65, loss


def test_corruption_reaches_the_model():
    """Masked positions are hidden from the model: on i.i.d. codes (or noise frames) it cannot beat chance there.
    If the uncorrupted input were fed, it would copy the targets."""
    _, acc = _fit("mlm", random_codes)
    assert acc < 0.15, acc
    loss, _ = _fit("masked_frames", lambda g: torch.randn(16, 32, 12, generator=g))
    assert loss > 0.65, loss


def frame_coded(g):
    """i.i.d. noise frames whose code is a function of the frame itself (argmax of its first 16 values):
    a model that sees a masked frame reads its code off; one that does not is at chance."""
    frames = torch.randn(16, 32, 16, generator=g)
    return frames, frames.argmax(-1)[:, None].expand(16, 2, 32).contiguous()


def _fit_pair(inputs: str, steps: int = 80, fill: str = "bert") -> float:
    torch.manual_seed(0)
    model = Prior(cfg(objective="mlm", inputs=inputs, layers=1, max_len=32, frame_dim=16, mask_fill=fill))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    for step in range(steps):
        frames, codes = frame_coded(g)
        o = compute_loss(model, Batch(codes, frames, torch.full((16,), 32), torch.arange(16) + 16 * step))
        opt.zero_grad()
        o.loss.backward()
        opt.step()
    return o.correct / (o.targets * 2)


@pytest.mark.parametrize("inputs", ["frames", "codes+frames"])
def test_frames_to_codes_hides_the_masked_input(inputs):
    """Continuous input, code targets: masked frames are corrupted before the model sees them, so codes that
    are a function of the frame alone stay near chance: 1/16, plus BERT's 10% of masked frames left unchanged
    (about 0.16). Fed the clean frames, it would read them all off (about 1.0)."""
    assert _fit_pair(inputs) < 0.3


def test_noise_fill_replaces_every_masked_frame_and_nothing_else():
    """`mask_fill: noise` (MusicFM / MuQ): each masked frame is unit normal noise drawn from the row's own
    generator (so a row is corrupted alike on any rank), the others are untouched."""
    lengths = torch.tensor([60, 37])
    frames = torch.randn(2, 60, 12) * 0.1 + 5.0  # far from the noise, so a copied frame would show
    frames[1, 37:] = 0.0
    mask = span_mask(lengths, 60, 0.3, 5, row_generators(torch.tensor([3, 4])))
    out = corrupt_frames(frames, mask, lengths, row_generators(torch.tensor([3, 4])), fill="noise")
    torch.testing.assert_close(out[~mask], frames[~mask])
    noise = out[mask]
    assert (noise - frames[mask]).abs().min() > 0  # every masked frame replaced (BERT leaves 10% unchanged)
    assert abs(float(noise.mean())) < 0.15 and abs(float(noise.std()) - 1.0) < 0.15
    again = corrupt_frames(frames, mask, lengths, row_generators(torch.tensor([3, 4])), fill="noise")
    torch.testing.assert_close(out, again)
    one = corrupt_frames(frames[1:], mask[1:], lengths[1:], row_generators(torch.tensor([4])), fill="noise")
    torch.testing.assert_close(one, out[1:])  # row 1 alone, as on another rank
    # noise leaves nothing of the masked frame to read: codes that are a function of it stay at chance (1/16),
    # below BERT's fill, whose 10% of unchanged masked frames give them away
    assert _fit_pair("frames", fill="noise") < min(0.15, _fit_pair("frames"))
    with pytest.raises(ConfigError, match="model.mask_fill"):
        cfg(objective="mlm", mask_fill="noise")  # reads codes only
    with pytest.raises(ConfigError, match="model.mask_fill"):
        cfg(objective="next_frames", mask_fill="noise")
    with pytest.raises(ConfigError, match=r"mask_fill: expected one of \['bert', 'noise'\], got 'zeros'"):
        load_config(PriorConfig, None, ["mask_fill=zeros"])  # named as the section-less config names it


def test_inputs_and_targets_build_the_right_heads():
    m = Prior(cfg(objective="mlm", inputs="frames"))
    assert hasattr(m, "code_out") and hasattr(m, "proj_in") and not hasattr(m, "embed") and not hasattr(m, "head")
    assert m.cfg.input_kind == "frames" and m.cfg.target_kind == "codes" and m.cfg.uses_frames
    m = Prior(cfg(objective="masked_frames", inputs="codes+frames"))
    assert hasattr(m, "embed") and hasattr(m, "proj_in") and hasattr(m, "head") and not hasattr(m, "head_bias")
    m = Prior(cfg(objective="mlm"))  # the old presets keep their parameter names (old checkpoints load)
    assert {n.split(".")[0] for n, _ in m.named_parameters()} == {"embed", "head_bias", "blocks", "norm"}


def test_swiglu_relu_and_dropout():
    torch.manual_seed(0)
    _, acc = _fit("ar", successor_codes, mlp="swiglu")
    assert acc > 0.9
    _, acc = _fit("ar", successor_codes, mlp="relu")
    assert acc > 0.9
    mlp = Prior(cfg(objective="mlm", mlp="relu")).blocks[0].mlp
    x = torch.randn(3, 32)
    torch.testing.assert_close(mlp(x), mlp.down(torch.relu(mlp.up(x))))
    assert not torch.allclose(mlp(x), mlp.down(F.gelu(mlp.up(x))))
    model = Prior(cfg(objective="mlm", dropout=0.3))
    x = torch.randint(0, 16, (2, 2, 20))
    model.train()
    assert not torch.equal(model(x).hidden, model(x).hidden)  # dropout is on in training
    model.eval()
    assert torch.equal(model(x).hidden, model(x).hidden)
    _, acc = _fit("ar", successor_codes, dropout=0.1)
    assert acc > 0.6


def test_rotary_rotates_pairs_by_position():
    """Pairs (i, i + hd/2) turn by position x base^(-2i/hd) (GPT-NeoX's layout), so a rotated query and key
    meet by their offset alone."""
    torch.manual_seed(0)
    cos, sin = rotary_tables(16, 8, 100.0)
    x = torch.randn(16, 8)
    ang = torch.arange(16.0)[:, None] * 100.0 ** (-torch.arange(0, 8, 2) / 8)  # (T, 4)
    x1, x2 = x[:, :4], x[:, 4:]
    expected = torch.cat([x1 * ang.cos() - x2 * ang.sin(), x2 * ang.cos() + x1 * ang.sin()], -1)
    assert torch.allclose(apply_rotary(x, cos, sin), expected, atol=1e-6)
    q, k = torch.randn(8).expand(16, 8), torch.randn(8).expand(16, 8)
    rq, rk = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    assert torch.allclose(rq[3] @ rk[1], rq[12] @ rk[10], atol=1e-5)  # offset 2 at either place
    assert not torch.allclose(rq[3] @ rk[1], rq[3] @ rk[2], atol=1e-3)



def test_rotary_matrices_are_the_same_rotation():
    """`x @ rotary_matrices(cos, sin)[t]` is `apply_rotary` at every position, and an attention layer gives the same
    output and gradients whichever of the two rotates its queries and keys (all queries, or a subset)."""
    torch.manual_seed(0)
    cos, sin = rotary_tables(16, 8, 100.0)
    x = torch.randn(3, 16, 8)
    rot = rotary_matrices(cos, sin)
    assert torch.allclose(torch.einsum("btd,tde->bte", x, rot), apply_rotary(x, cos, sin), atol=1e-6)
    model = Prior(cfg(objective="mlm", max_len=16))
    attn = model.blocks[0].attn
    cos, sin = model.rope_cos, model.rope_sin
    h = torch.randn(2, 16, 32, requires_grad=True)
    q_index = torch.tensor([[1, 5, 9], [0, 2, 15]])
    for index in (None, q_index):
        ref = attn(h, cos, sin, None, False, index)
        out = attn(h, cos, sin, None, False, index, rotary_matrices(cos, sin))
        torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)
        g_ref, = torch.autograd.grad(ref.square().sum(), h)
        g_out, = torch.autograd.grad(out.square().sum(), h)
        torch.testing.assert_close(g_out, g_ref, atol=1e-6, rtol=1e-5)

@pytest.mark.parametrize("case", ["full", "causal", "padding", "queries"])
def test_cpu_bf16_attention_is_sdpa_written_out(case):
    """On a CPU in bf16, `attend` (two matmuls and a softmax) gives what the fused kernel gives, forward and
    backward, with masks, causal order and a subset of queries; in fp32 it is the fused kernel itself."""
    import torch.nn.functional as F
    torch.manual_seed(0)
    t, n = 12, (5 if case == "queries" else 12)
    q, k, v = (torch.randn(2, 3, m, 8).bfloat16().float().requires_grad_() for m in (n, t, t))
    mask = None
    if case in ("padding", "queries"):
        mask = torch.ones(2, 1, 1, t, dtype=torch.bool)
        mask[1, ..., 7:] = False
    causal = case == "causal"
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
    ref_grads = torch.autograd.grad(ref.square().sum(), (q, k, v))
    assert torch.equal(attend(q, k, v, mask, causal), ref)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attend(q, k, v, mask, causal)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=3e-2)
    for g, want in zip(torch.autograd.grad(out.float().square().sum(), (q, k, v)), ref_grads):
        torch.testing.assert_close(g, want, atol=6e-2, rtol=6e-2)
    if causal:  # the future is out of reach: a later key changes nothing before it
        k2 = k.detach().clone()
        k2[..., -1, :] += 5
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.equal(attend(q, k2, v, None, True)[..., :-1, :], out[..., :-1, :])


def test_long_windows_keep_the_fused_kernel_in_bf16():
    """Past `WRITTEN_OUT_MAX` frames the fused kernel is the faster one in bf16 too, so `attend` is that kernel."""
    import torch.nn.functional as F
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, WRITTEN_OUT_MAX + 1, 8) for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(attend(q, k, v, None, True), F.scaled_dot_product_attention(q, k, v, is_causal=True))


def test_a_prior_under_cpu_bf16_autocast_matches_fp32():
    """The whole prior in bf16 on a CPU (written-out attention, rotary tables in bf16) stays within bf16's
    rounding of fp32, padding and pruned last block included."""
    torch.manual_seed(0)
    for objective in ("mlm", "ar"):
        model = Prior(cfg(objective=objective)).eval()
        x = torch.randint(0, 16, (3, 2, 20))
        valid = torch.ones(3, 20, dtype=torch.bool)
        valid[2, 14:] = False
        keep = (torch.rand(3, 20) < 0.3) & valid if objective == "mlm" else None
        with torch.no_grad():
            ref = model(x, valid, keep=keep).hidden
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(x, valid, keep=keep).hidden
        assert out.shape == ref.shape
        torch.testing.assert_close(out.float(), ref, atol=5e-2, rtol=5e-2)


def test_attention_dropout_is_its_own_setting():
    """`attn_dropout` null follows `dropout`; 0 keeps the attention weights whole while the residuals drop."""
    torch.manual_seed(0)
    x, codes = torch.randn(2, 20, 32), torch.randint(0, 16, (2, 2, 20))

    def train_mode(**kw):
        model = Prior(cfg(objective="mlm", **kw)).train()
        cos, sin = model.rope_cos[:20], model.rope_sin[:20]
        attn = model.blocks[0].attn
        return model, torch.equal(attn(x, cos, sin, None, False), attn(x, cos, sin, None, False))

    model, attention_repeats = train_mode(dropout=0.3, attn_dropout=0.0)
    assert attention_repeats and not torch.equal(model(codes).hidden, model(codes).hidden)
    assert not train_mode(dropout=0.3)[1]  # null: the attention weights drop too
    assert not train_mode(dropout=0.0, attn_dropout=0.3)[1]
    with pytest.raises(ConfigError, match="model.attn_dropout"):
        cfg(attn_dropout=1.0)


def test_init_and_weight_decay_groups():
    from musetok.shared.training import make_optimizer
    model = Prior(cfg(dim=256, heads=4, layers=4, codebook_size=512, num_codebooks=1))
    for block in model.blocks:  # residual projections start at 0.02 / sqrt(2 * layers)
        for w in (block.attn.out.weight, block.mlp.down.weight):
            assert abs(w.std().item() - 0.02 / 8**0.5) < 0.0005
    assert abs(model.blocks[0].attn.qkv.weight.std().item() - 0.02) < 0.0005
    opt = make_optimizer(model, 1e-3, 0.1)
    decayed = {id(p) for p in opt.param_groups[0]["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in decayed}
    assert "head_bias" not in names and not any(n.endswith("bias") or ".ln" in n for n in names)
    assert "blocks.0.attn.qkv.weight" in names and "embed.0.weight" in names


def test_last_hidden_state_is_the_normalised_output():
    torch.manual_seed(0)
    model = Prior(cfg(objective="mlm")).eval()
    o = model(torch.randint(0, 16, (2, 2, 20)), output_hidden_states=True)
    assert len(o.hidden_states) == len(model.layer_names)
    torch.testing.assert_close(o.hidden_states[-1], o.hidden)
    last = o.hidden_states[-1]
    torch.testing.assert_close(last.mean(-1), torch.zeros(2, 20), atol=1e-4, rtol=0)
    torch.testing.assert_close(last.std(-1, unbiased=False), torch.ones(2, 20), atol=0.05, rtol=0)


def test_bert_corruption_80_10_10():
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 100, (64, 1, 500), generator=g)
    mask = torch.rand(64, 500, generator=g) < 0.5
    out = corrupt_codes(codes, mask, mask_id=100, vocab=100, gens=row_generators(torch.arange(64)))
    assert torch.equal(out[:, 0][~mask], codes[:, 0][~mask])  # unmasked frames untouched
    m_out, m_in = out[:, 0][mask], codes[:, 0][mask]
    p_mask = (m_out == 100).float().mean().item()
    p_same = (m_out == m_in).float().mean().item()
    assert abs(p_mask - 0.8) < 0.02
    assert abs(p_same - 0.1 - 0.1 / 100) < 0.02  # kept, plus random codes that happen to match



def test_bert_frame_corruption_80_10_10_within_the_row():
    """TERA's fill: of the masked frames 80% become zeros, 10% a frame drawn from the same row's valid frames,
    10% stay; unmasked frames and padding are untouched, and a row is corrupted alike alone or in a batch."""
    torch.manual_seed(0)
    b, t = 48, 200
    lengths = torch.randint(100, t + 1, (b,))
    frames = torch.arange(b * t, dtype=torch.float32).view(b, t, 1).expand(b, t, 3) + 1.0  # every frame unique
    frames = frames * (torch.arange(t)[None, :, None] < lengths[:, None, None])
    mask = span_mask(lengths, t, 0.5, 5, row_generators(torch.arange(b)))
    out = corrupt_frames(frames, mask, lengths, row_generators(torch.arange(b)))
    assert torch.equal(out[~mask], frames[~mask])
    got, was = out[mask][:, 0], frames[mask][:, 0]
    zero, same = got == 0, got == was
    row_of = (got - 1).div(t, rounding_mode="floor")  # which row a copied frame came from
    pos_of = (got - 1) % t
    moved = ~zero & ~same
    rows = mask.nonzero()[:, 0]
    assert torch.equal(row_of[moved], rows[moved].float())  # from its own row
    assert bool((pos_of[moved] < lengths[rows[moved]]).all())  # from its valid frames
    assert abs(zero.float().mean().item() - 0.8) < 0.02
    assert abs(moved.float().mean().item() - 0.1) < 0.02
    one = corrupt_frames(frames[5:6], mask[5:6], lengths[5:6], row_generators(torch.tensor([5])))
    assert torch.equal(one, out[5:6])


def test_mlm_loss_only_on_masked_positions():
    """Code 15 sits only at unmasked frames. If those frames were in the loss, code 15's output bias
    would get a negative gradient (its one-hot target); on masked frames only, it gets only softmax mass."""
    torch.manual_seed(0)
    model = Prior(cfg(objective="mlm"))
    lengths, seeds = torch.tensor([40, 40, 25]), torch.tensor([5, 6, 7])
    mask = span_mask(lengths, 40, 0.3, 5, row_generators(seeds))  # what compute_loss will draw
    codes = torch.full((3, 2, 40), 15)
    codes[mask[:, None].expand_as(codes)] = torch.randint(0, 15, (int(mask.sum()) * 2,))
    o = compute_loss(model, Batch(codes, None, lengths, seeds))
    assert o.targets == int(mask.sum())
    o.loss.backward()
    g = model.head_bias.grad  # (K, V)
    assert (g[:, 15] > 0).all()
    assert (g[:, :15].min(dim=1).values < 0).all()


def test_causal_model_cannot_see_the_future():
    torch.manual_seed(0)
    for objective in ("ar", "next_frames"):
        model = Prior(cfg(objective=objective)).eval()
        if objective == "ar":
            x = torch.randint(0, 16, (1, 2, 30))
            y = x.clone()
            y[:, :, 20] = (y[:, :, 20] + 1) % 16
        else:
            x = torch.randn(1, 30, 12)
            y = x.clone()
            y[:, 20] += 1.0
        with torch.no_grad():
            a, b = model(x).hidden, model(y).hidden
        torch.testing.assert_close(a[:, :20], b[:, :20])
        assert (a[:, 20:] - b[:, 20:]).abs().max() > 1e-4
    bidirectional = Prior(cfg(objective="mlm")).eval()
    x = torch.randint(0, 16, (1, 2, 30))
    y = x.clone()
    y[:, :, 20] = (y[:, :, 20] + 1) % 16
    with torch.no_grad():
        assert (bidirectional(x).hidden[:, :20] - bidirectional(y).hidden[:, :20]).abs().max() > 1e-4


def test_padding_does_not_change_valid_outputs():
    torch.manual_seed(0)
    for objective in ("mlm", "ar"):
        model = Prior(cfg(objective=objective)).eval()
        x = torch.randint(0, 16, (1, 2, 20))
        padded = torch.cat([x, torch.randint(0, 16, (1, 2, 12))], dim=2)
        valid = torch.arange(32)[None] < 20
        with torch.no_grad():
            torch.testing.assert_close(model(x).hidden, model(padded, valid).hidden[:, :20], atol=1e-5, rtol=1e-5)


def test_config_errors():
    from musetok.prior.train import PriorRunConfig
    with pytest.raises(ConfigError, match="model.dim: must be divisible by model.heads"):
        load_config(PriorRunConfig, None, ["model.dim=100", "model.heads=3"])
    with pytest.raises(ConfigError, match="model.objective: expected one of"):
        load_config(PriorRunConfig, None, ["model.objective=gpt"])
    for name in ("small", "base"):
        load_config(PriorRunConfig, name, kind="prior")


@pytest.mark.parametrize("objective", ["mlm", "ar", "masked_frames", "next_frames", "mlm:frames",
                                       "mlm:codes+frames", "ar:frames"])
def test_loss_falls_for_each_objective(tmp_path, store, objective):
    from musetok.prior.train import PriorRunConfig, train_prior
    objective, _, inputs = objective.partition(":")
    over = [f"model.objective={objective}", "train.steps=150"] + ([f"model.inputs={inputs}"] if inputs else [])
    run = load_config(PriorRunConfig, None, TINY_PRIOR + over)
    r = train_prior(run, store, tmp_path / objective, progress=False)
    recs = [json.loads(ln) for ln in (tmp_path / objective / "metrics.jsonl").read_text().splitlines()]
    train = [x["loss"] for x in recs if x["split"] == "train"]
    assert np.mean(train[-3:]) < 0.85 * train[0], train
    assert (tmp_path / objective / "training_curve.png").is_file()
    if objective in ("mlm", "ar"):
        assert r.valid_accuracy > 1.5 / 32  # clearly above chance over 32 codes


def test_resume_gives_same_parameters(tmp_path, store):
    from musetok.prior.train import PriorRunConfig, train_prior
    from musetok.shared.io import load_weights
    run = load_config(PriorRunConfig, None, TINY_PRIOR + ["train.steps=30", "train.grad_accum=2",
                                                          "train.checkpoint_every=10"])
    train_prior(run, store, tmp_path / "full", progress=False)
    train_prior(run, store, tmp_path / "resumed", progress=False, stop_at=13)
    train_prior(run, store, tmp_path / "resumed", resume=True, progress=False)
    a, b = load_weights(tmp_path / "full"), load_weights(tmp_path / "resumed")
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)


@pytest.mark.parametrize("objective", ["mlm", "ar"])
def test_keep_computes_exactly_the_kept_positions(objective):
    """The pruned last block (queries/MLP only at scored positions) equals the full model there."""
    torch.manual_seed(0)
    model = Prior(cfg(objective=objective)).eval()
    x = torch.randint(0, 16, (3, 2, 40))
    keep = torch.rand(3, 40) < 0.3
    valid = torch.ones(3, 40, dtype=torch.bool)
    valid[2, 30:] = False
    keep &= valid
    with torch.no_grad():
        full = model(x, valid).hidden[keep]
        part = model(x, valid, keep=keep).hidden
    torch.testing.assert_close(part, full, atol=1e-5, rtol=1e-5)


def test_resume_refuses_a_store_of_another_tokenizer(tmp_path, store):
    import shutil

    from musetok.prior.train import PriorRunConfig, train_prior
    from musetok.shared.io import CheckpointError
    run = load_config(PriorRunConfig, None, TINY_PRIOR + ["train.steps=10", "train.checkpoint_every=5"])
    train_prior(run, store, tmp_path / "p", progress=False, stop_at=5)
    other = tmp_path / "other"
    shutil.copytree(store, other)
    meta = json.loads((other / "meta.json").read_text())
    meta["tokenizer_id"] = "0123456789abcdef"
    (other / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="prior was trained on tokenizer .*tokenizer_id"):
        train_prior(run, other, tmp_path / "p", resume=True, progress=False)
    assert train_prior(run, store, tmp_path / "p", resume=True, progress=False).steps == 10


# -- BEST-RQ targets, learned codebook weights, auxiliary frame target --------------------------------------
def test_random_projection_targets_are_frozen_and_follow_the_clean_frames():
    """BEST-RQ: the quantiser is a fixed function of `rpq_seed` (same codes in two models, other codes with
    another seed), it is not trained, and it lands in the checkpoint."""
    a, b = Prior(cfg(inputs="frames", targets="random")), Prior(cfg(inputs="frames", targets="random"))
    c = Prior(cfg(inputs="frames", targets="random", rpq_seed=1))
    frames = torch.randn(4, 20, 12)
    codes = a.random_codes(frames)
    assert codes.shape == (4, 20, 1) and int(codes.max()) < 512
    assert torch.equal(codes, b.random_codes(frames)) and not torch.equal(codes, c.random_codes(frames))
    assert len(torch.unique(codes)) > 20  # spread over the codebook, not collapsed onto a few codes
    assert not any("rpq" in n for n, _ in a.named_parameters())
    assert {"rpq_proj", "rpq_codebook"} <= set(a.state_dict())
    assert a.code_out.shape == (1, 512, 32)


def test_random_targets_are_scored_on_the_masked_clean_frames():
    """On i.i.d. noise frames a masked frame's random-projection code cannot be inferred from its neighbours, so
    accuracy stays near chance. Targets drawn from the corrupted input (80% zeros: one constant code) would
    be predicted at >= 0.8, and a model reading the clean frames would learn them all."""
    torch.manual_seed(0)
    model = Prior(cfg(inputs="frames", targets="random", layers=1, max_len=32, frame_dim=16, rpq_size=8))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    for step in range(80):
        frames = torch.randn(16, 32, 16, generator=g)
        o = compute_loss(model, Batch(None, frames, torch.full((16,), 32), torch.arange(16) + 16 * step))
        opt.zero_grad()
        o.loss.backward()
        opt.step()
    assert o.correct / o.targets < 0.35  # 8 codes: chance 1/8 plus the 10% of masked frames left unchanged


def test_learned_codebook_weights_start_as_the_sum_and_train():
    torch.manual_seed(0)
    plain = Prior(cfg(num_codebooks=3))
    torch.manual_seed(0)
    weighted = Prior(cfg(num_codebooks=3, code_mix="weighted"))
    codes = torch.randint(0, 16, (2, 3, 10))
    assert torch.allclose(plain.embed_inputs(codes), weighted.embed_inputs(codes), atol=1e-6)
    o = compute_loss(weighted, Batch(codes, None, torch.full((2,), 10), torch.arange(2)))
    o.loss.backward()
    assert weighted.code_weights.grad is not None and weighted.code_weights.grad.abs().sum() > 0


def test_aux_frames_adds_the_masked_frame_l1():
    torch.manual_seed(0)
    m = Prior(cfg(inputs="frames", aux_frames=0.5))
    batch = frames_batch([20, 20])
    out, without = with_and_without(m, batch, "aux_frames")
    assert out.cross_entropy == pytest.approx(without.item(), abs=1e-5)  # what the perplexity is taken from
    f_in, mask = heard(m, batch)
    h = m(f_in, keep=mask).hidden
    l1 = torch.nn.functional.l1_loss(m.frame_prediction(h), batch.frames[mask])
    assert torch.allclose(out.loss - without, 0.5 * l1, atol=1e-5)
    with pytest.raises(ConfigError, match="aux_frames"):
        cfg(objective="masked_frames", aux_frames=1.0)


def test_aux_frames_layer_predicts_the_frames_from_a_lower_block():
    """`aux_frames_layer: k`: the frame target is read from block k's output through its own LayerNorm, the codes
    from the last block as before; k = 0 is the last block (the default), and it needs aux_frames."""
    torch.manual_seed(0)
    m = Prior(cfg(inputs="frames", aux_frames=0.5, aux_frames_layer=1))
    batch = frames_batch([20, 20])
    codes, frames = batch.codes, batch.frames
    loss = compute_loss(m, batch).loss
    f_in, mask = heard(m, batch)
    o = m(f_in, keep=mask, output_hidden_states=True)
    logits = m.code_logits(o.hidden)
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), codes.permute(0, 2, 1)[mask].flatten())
    l1 = torch.nn.functional.l1_loss(m.frame_prediction(m.aux_norm(o.hidden_states[1][mask])), frames[mask])
    assert torch.allclose(loss, ce + 0.5 * l1, atol=1e-5)
    loss.backward()
    assert m.aux_norm.weight.grad.abs().sum() > 0
    assert not hasattr(Prior(cfg(inputs="frames", aux_frames=0.5)), "aux_norm")
    for bad in (dict(aux_frames=0.5, aux_frames_layer=2), dict(aux_frames_layer=1)):
        with pytest.raises(ConfigError, match="aux_frames_layer"):
            cfg(inputs="frames", **bad)


def test_aux_visible_adds_the_unmasked_frames_l1():
    """`aux_visible`: the loss adds w x L1 of the frame head at the valid unmasked positions (not padding), the
    masked part unchanged; the masked-only loss is the same with the last block run everywhere."""
    torch.manual_seed(0)
    m = Prior(cfg(inputs="frames", aux_frames=1.0, aux_visible=0.5))
    batch = frames_batch([20, 13])
    out, without = with_and_without(m, batch, "aux_visible")
    f_in, mask = heard(m, batch)
    valid = torch.arange(20)[None] < batch.lengths[:, None]
    h = m(f_in, valid).hidden
    seen = valid & ~mask
    assert 0 < int(seen.sum()) < int(valid.sum())
    l1 = torch.nn.functional.l1_loss(m.frame_prediction(h[seen]), batch.frames[seen])
    assert torch.allclose(out.loss - without, 0.5 * l1, atol=1e-5)
    for bad in (dict(objective="next_frames"), dict(aux_frames=0.0), dict(aux_frames=1.0, aux_frames_layer=1)):
        with pytest.raises(ConfigError, match="aux_visible"):
            cfg(inputs="frames", aux_visible=1.0, **bad)
    cfg(objective="masked_frames", aux_visible=1.0)  # the control may take it too


def test_decorrelation_is_vicregs_covariance_term_on_standardised_channels():
    """0 for independent channels, D - 1 when every channel is one, whatever each channel's scale and offset."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20000, 8, generator=g)
    assert decorrelation(x).item() < 0.01
    same = x[:, :1] * torch.arange(1.0, 9.0) + torch.arange(8.0)  # one channel, scaled and shifted
    assert abs(decorrelation(same).item() - 7.0) < 0.01
    half = torch.cat([x[:, :4], x[:, :4] * 3.0], 1)  # 4 pairs of identical channels: 8 off-diagonal ones / 8
    assert abs(decorrelation(half).item() - 1.0) < 0.01


def test_aux_decorr_adds_the_layer_decorrelation_at_the_visible_frames_and_trains_it_down():
    """`aux_decorr`: the loss adds w x `decorrelation` of the chosen layer's states at the valid unmasked frames;
    trained with it, the input layer of a prior reading correlated frames ends up far less correlated."""
    torch.manual_seed(0)
    m = Prior(cfg(inputs="frames", aux_frames=1.0, aux_decorr=0.5, aux_decorr_layer=1))
    batch = frames_batch([20, 13])
    out, without = with_and_without(m, batch, "aux_decorr")
    f_in, mask = heard(m, batch)
    valid = torch.arange(20)[None] < batch.lengths[:, None]
    states = m(f_in, valid, output_hidden_states=True).hidden_states
    assert torch.allclose(out.loss - without, 0.5 * decorrelation(states[1][valid & ~mask]), atol=1e-5)

    def input_layer_correlation(weight: float) -> float:
        torch.manual_seed(0)
        model = Prior(cfg(inputs="frames", aux_frames=1.0, aux_decorr=weight, layers=1, max_len=32, frame_dim=16))
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        g = torch.Generator().manual_seed(1)
        mix = torch.randn(4, 16, generator=g)  # 16 bands driven by 4 sources: strongly correlated frames

        def correlated(n):
            return (torch.randn(n, 32, 4, generator=g) @ mix + 0.3 * torch.randn(n, 32, 16, generator=g))
        for step in range(60):
            frames = correlated(16)
            codes = frames.argmax(-1)[:, None].expand(16, 2, 32).contiguous()
            o = compute_loss(model, Batch(codes, frames, torch.full((16,), 32), torch.arange(16) + 16 * step))
            opt.zero_grad()
            o.loss.backward()
            opt.step()
        with torch.no_grad():
            return decorrelation(model.embed_inputs(correlated(64)).flatten(0, 1)).item()
    plain, decorrelated = input_layer_correlation(0.0), input_layer_correlation(1.0)
    assert decorrelated < 0.5 * plain, (decorrelated, plain)
    for bad in (dict(objective="ar", inputs="codes"), dict(aux_decorr_layer=2)):
        with pytest.raises(ConfigError, match="aux_decorr"):
            cfg(aux_decorr=1.0, **bad)
    cfg(objective="masked_frames", aux_decorr=1.0)  # the control may take it too

def test_band_mask_hides_one_stretch_of_bands_at_unmasked_frames():
    """At about `rate` of each row's valid unmasked frames, exactly `width` adjacent bands; nowhere else; a row
    draws the same alone as in its batch."""
    lengths = torch.tensor([200, 120])
    gens = row_generators(torch.tensor([3, 4]))
    masked = span_mask(lengths, 200, 0.3, 5, gens)
    banded, hidden = band_mask(masked, lengths, 20, 0.4, 6, gens)
    valid = torch.arange(200)[None] < lengths[:, None]
    assert torch.equal(hidden.any(-1), banded)
    assert not (banded & ~(valid & ~masked)).any()
    assert 0.3 < banded.sum() / (valid & ~masked).sum() < 0.5
    rows = hidden[banded].int()  # (N, 20)
    assert (rows.sum(1) == 6).all()
    assert ((rows.diff(dim=1) != 0).sum(1) <= 2).all()  # one stretch: it switches on once and off once at most
    starts = rows.argmax(1)
    assert starts.min() == 0 and starts.max() == 14  # every start from the first band to the last that fits
    gens = row_generators(torch.tensor([4]))
    alone = band_mask(span_mask(lengths[1:], 200, 0.3, 5, gens), lengths[1:], 20, 0.4, 6, gens)[1]
    assert torch.equal(alone[0], hidden[1])


def test_aux_bands_hides_the_bands_and_scores_them():
    """`aux_bands`: the prior reads its hidden bands (in every stacked frame) as zeros, and the loss is the masked
    frames' code and frame terms plus w x L1 of the frame head on just the hidden bands."""
    torch.manual_seed(0)
    m = Prior(cfg(inputs="frames", aux_frames=1.0, aux_bands=0.5, frame_bands=6, band_mask_width=2,
                  band_mask_rate=0.5))
    batch = frames_batch([20, 13])
    codes, frames = batch.codes, batch.frames
    loss = compute_loss(m, batch).loss
    f_in, mask, banded, hidden = heard(m, batch, bands=True)
    assert banded.sum() > 3 and torch.equal(hidden[..., :6], hidden[..., 6:])  # both stacked frames alike
    assert (f_in[hidden] == 0).all() and torch.equal(f_in[~hidden], heard(m, batch)[0][~hidden])
    valid = torch.arange(20)[None] < batch.lengths[:, None]
    h = m(f_in, valid).hidden
    logits = m.code_logits(h[mask])
    want = torch.nn.functional.cross_entropy(logits.flatten(0, 1), codes.permute(0, 2, 1)[mask].flatten())
    want = want + torch.nn.functional.l1_loss(m.frame_prediction(h[mask]), frames[mask])
    want = want + 0.5 * (m.frame_prediction(h[banded]) - frames[banded])[hidden[banded]].abs().mean()
    assert torch.allclose(loss, want, atol=1e-5)
    for bad in (dict(inputs="codes+frames", aux_frames=1.0), dict(inputs="frames"),
                dict(inputs="frames", aux_frames=1.0, aux_frames_layer=1), dict(objective="next_frames")):
        with pytest.raises(ConfigError, match="model.aux_bands"):
            cfg(aux_bands=1.0, **bad)
    with pytest.raises(ConfigError, match="model.band_mask_width: must be at most the frames' bands"):
        cfg(objective="masked_frames", aux_bands=1.0, frame_bands=6, band_mask_width=7)


def test_aux_bands_learns_to_fill_hidden_bands_from_the_other_octave():
    """Frames whose upper octave copies the lower one, independent in time: only the bands left visible can tell
    the hidden ones. Trained with `aux_bands`, the control fills them far better than their mean does."""
    def frames(n, g):
        low = torch.randn(n, 32, 12, generator=g)
        return torch.cat([low, low], -1)  # 24 bands: band b + 12 is band b

    torch.manual_seed(0)
    m = Prior(cfg(objective="masked_frames", aux_bands=1.0, frame_dim=24, frame_bands=24, band_mask_width=4,
                  band_mask_rate=0.5, layers=1, max_len=32))
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    for step in range(150):
        batch = Batch(None, frames(16, g), torch.full((16,), 32), torch.arange(16) + 16 * step)
        o = compute_loss(m, batch)
        opt.zero_grad()
        o.loss.backward()
        opt.step()
    batch = Batch(None, frames(16, g), torch.full((16,), 32), torch.arange(16) + 10_000)
    with torch.no_grad():
        f_in, _, banded, hidden = heard(m, batch, bands=True)
        pred = m.frame_prediction(m(f_in, torch.ones(16, 32, dtype=torch.bool)).hidden[banded])
    truth = batch.frames[banded][hidden[banded]]
    filled, mean = (pred[hidden[banded]] - truth).abs().mean().item(), truth.abs().mean().item()
    assert filled < 0.5 * mean, (filled, mean)


def test_aux_random_adds_the_masked_frames_random_code_cross_entropy():
    """`aux_random`: the tokenizer's code loss plus w x cross-entropy of the random head against BEST-RQ's codes
    of the clean masked frames (the same frozen quantiser `targets: random` uses)."""
    torch.manual_seed(0)
    m = Prior(cfg(inputs="frames", aux_random=0.5, rpq_size=8))
    assert m.code_out.shape == (2, 16, 32)  # the tokenizer's codes stay the main target
    batch = frames_batch([20, 20])
    out, without = with_and_without(m, batch, "aux_random")
    f_in, mask = heard(m, batch)
    h = m(f_in, keep=mask).hidden
    target = Prior(cfg(inputs="frames", targets="random", rpq_size=8)).random_codes(batch.frames[mask])  # same seed
    ce = torch.nn.functional.cross_entropy(m.random_logits(h).flatten(0, 1), target.flatten())
    assert torch.allclose(out.loss - without, 0.5 * ce, atol=1e-5)
    out.loss.backward()
    assert m.random_head.weight.grad.abs().sum() > 0
    assert not any("rpq" in n for n, _ in m.named_parameters())
    for bad in (dict(objective="ar", inputs="frames"), dict(inputs="frames", targets="random")):
        with pytest.raises(ConfigError, match="aux_random"):
            cfg(aux_random=1.0, **bad)


def _train_frames_prior(tmp_path, store, *settings: str):
    """A tiny frames -> codes prior with more settings, 20 steps: (its result, its model card)."""
    from musetok.prior.train import PriorRunConfig, train_prior
    run = load_config(PriorRunConfig, None, TINY_PRIOR + ["model.inputs=frames", *settings, "train.steps=20",
                                                          "model.max_len=32"])
    r = train_prior(run, store, tmp_path / "p", progress=False)
    return r, (tmp_path / "p" / "README.md").read_text()


def test_an_aux_random_prior_trains_and_says_so(tmp_path, store):
    r, card = _train_frames_prior(tmp_path, store, "model.aux_random=1.0")
    assert np.isfinite(r.valid_loss) and r.valid_accuracy > 0
    assert "| reads -> predicts | frames -> codes + 1 x random-projection codes |" in card


def test_aux_bands_and_aux_decorr_priors_train_and_say_so(tmp_path, store):
    r, card = _train_frames_prior(tmp_path, store, "model.aux_frames=1.0", "model.aux_bands=0.5",
                                  "model.band_mask_width=4", "model.aux_decorr=0.1")
    assert np.isfinite(r.valid_loss) and r.valid_accuracy > 0
    assert ("| reads -> predicts | frames -> codes + 1 x frames + 0.1 x decorrelation of layer 0 + 0.5 x 4 bands "
            "hidden at 30% of the unmasked frames |") in card


def test_aux_teacher_regresses_an_ema_teacher_of_the_clean_window():
    """`aux_teacher` (data2vec): the loss adds w x MSE of the teacher head against the mean of the teacher's top
    layers, each normalised over time per channel, at the masked frames; the teacher starts as the student, takes no
    gradient, follows the student by EMA in training forwards only, and is saved and restored with the prior."""
    torch.manual_seed(0)
    m = Prior(cfg(inputs="frames", aux_teacher=0.5, teacher_layers=2, teacher_decay=0.9))
    student = {n: p for n, p in m.named_parameters() if not n.startswith("teacher")}
    for n, p in m.teacher.named_parameters():
        assert torch.equal(p, student[n]) and not p.requires_grad
    batch = frames_batch([20, 14])
    frames = batch.frames
    m.eval()
    with torch.no_grad():
        out, without = with_and_without(m, batch, "aux_teacher")
    f_in, mask = heard(m, batch)
    valid = torch.arange(20)[None] < batch.lengths[:, None]
    with torch.no_grad():
        h = m(f_in, valid, keep=mask).hidden
        states = m.teacher(frames, valid, output_hidden_states=True).hidden_states[-2:]
    targets = []
    for s in states:  # by hand, row by row over its valid frames
        rows = [(x[:n] - x[:n].mean(0)) / (x[:n].var(0, unbiased=False) + 1e-5).sqrt() for x, n in zip(s, [20, 14])]
        targets.append(torch.cat([torch.nn.functional.pad(r, (0, 0, 0, 20 - len(r))) for r in rows]).view(2, 20, -1))
    mse = torch.nn.functional.mse_loss(m.teacher_head(h), ((targets[0] + targets[1]) / 2)[mask])
    assert torch.allclose(out.loss - without, 0.5 * mse, atol=1e-5)
    assert all(torch.equal(p, student[n]) for n, p in m.teacher.named_parameters())  # eval forwards leave it
    m.train()
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1)
    before = {n: p.detach().clone() for n, p in m.teacher.named_parameters()}
    compute_loss(m, batch).loss.backward()
    assert all(p.grad is None for p in m.teacher.parameters()) and m.teacher_head.weight.grad.abs().sum() > 0
    opt.step()
    compute_loss(m, batch)  # the next training forward pulls the teacher 10% of the way to the stepped student
    for n, p in m.teacher.named_parameters():
        assert torch.allclose(p, 0.9 * before[n] + 0.1 * student[n].detach(), atol=1e-6)
    assert not torch.equal(m.teacher.blocks[0].attn.qkv.weight, m.blocks[0].attn.qkv.weight)
    again = Prior(cfg(inputs="frames", aux_teacher=0.5, teacher_layers=2, teacher_decay=0.9))
    again.load_state_dict(m.state_dict())
    assert torch.equal(again.teacher.blocks[0].attn.qkv.weight, m.teacher.blocks[0].attn.qkv.weight)
    for bad, key in ((dict(objective="ar"), "aux_teacher"), (dict(teacher_layers=3), "teacher_layers"),
                     (dict(teacher_decay=1.0), "teacher_decay")):
        with pytest.raises(ConfigError, match=key):
            cfg(aux_teacher=1.0, **bad)


def test_an_aux_teacher_prior_trains_and_says_so(tmp_path, store):
    r, card = _train_frames_prior(tmp_path, store, "model.aux_teacher=1.0")
    assert np.isfinite(r.valid_loss) and r.valid_accuracy > 0
    assert "| reads -> predicts | frames -> codes + 1 x EMA teacher's top 2 layers (decay 0.996) |" in card
    from musetok.prior.builder import load_prior
    back = load_prior(tmp_path / "p")  # the teacher comes back with the weights it was saved with
    assert not torch.equal(back.teacher.blocks[0].attn.qkv.weight, back.blocks[0].attn.qkv.weight)


def test_a_noise_fill_prior_trains_and_says_so(tmp_path, store):
    from musetok.prior.train import PriorRunConfig, train_prior
    over = TINY_PRIOR + ["model.inputs=frames", "model.aux_frames=1.0", "train.steps=30", "model.max_len=32"]
    for fill in ("bert", "noise"):
        train_prior(load_config(PriorRunConfig, None, over + [f"model.mask_fill={fill}"]), store, tmp_path / fill,
                    progress=False)
    recs = {f: [json.loads(ln) for ln in (tmp_path / f / "metrics.jsonl").read_text().splitlines()]
            for f in ("bert", "noise")}
    train = {f: [x["loss"] for x in r if x["split"] == "train"] for f, r in recs.items()}
    assert train["noise"] != train["bert"] and np.mean(train["noise"][-2:]) < train["noise"][0]
    card = (tmp_path / "noise" / "README.md").read_text()
    assert "| reads -> predicts | frames -> codes + 1 x frames; masked frames read as noise |" in card
    assert "noise" not in (tmp_path / "bert" / "README.md").read_text()
    assert json.loads((tmp_path / "noise" / "config.json").read_text())["config"]["mask_fill"] == "noise"


def test_a_fixed_input_projection_stays_as_drawn_while_the_blocks_train(tmp_path, store):
    """`input_proj: fixed`: the frames -> dim map is a frozen random orthogonal one (the input layer an isometry
    of the frames, up to scale), saved with the prior and read back; the blocks still train. `split`: that map
    fills the first half of the width and a learned one the rest, side by side."""
    from musetok.prior.builder import load_prior
    from musetok.prior.train import PriorRunConfig, train_prior
    over = TINY_PRIOR + ["model.inputs=frames", "model.aux_frames=1.0", "train.steps=30", "model.max_len=32"]

    def grams(w):  # gram of the shorter side, and what it would be for orthogonal vectors of the init's length
        g = w.T @ w if w.shape[0] >= w.shape[1] else w @ w.T
        return g, 0.02 ** 2 * max(w.shape) * torch.eye(min(w.shape))

    g, iso = grams(Prior(cfg(inputs="frames", input_proj="fixed")).proj_in.weight)
    assert torch.allclose(g, iso, atol=1e-6)
    for proj in ("learned", "fixed", "split"):
        train_prior(load_config(PriorRunConfig, None, over + [f"model.input_proj={proj}"]), store,
                    tmp_path / proj, progress=False)
        trained = load_prior(tmp_path / proj)
        frozen = trained.proj_fixed if proj == "split" else trained.proj_in
        assert trained.cfg.input_proj == proj and frozen.weight.requires_grad == (proj == "learned")
        assert hasattr(trained, "proj_fixed") == (proj == "split")
        g, iso = grams(frozen.weight)
        assert torch.allclose(g, iso, atol=1e-6) == (proj != "learned")  # untouched by 30 steps unless learned
        dim = trained.cfg.dim
        if proj != "fixed":  # the learned map: the whole width, or the half beside the frozen one
            assert trained.proj_in.weight.requires_grad
            assert trained.proj_in.out_features == (dim - dim // 2 if proj == "split" else dim)
        if proj == "split":  # the input layer: the frozen half, then the learned half
            g, iso = grams(trained.proj_in.weight)
            assert not torch.allclose(g, iso, atol=1e-6)
            frames = torch.randn(2, 8, trained.cfg.frame_dim)
            with torch.no_grad():
                h = trained.embed_inputs(frames)
            assert h.shape == (2, 8, dim)
            assert torch.allclose(h[..., : dim // 2], frames @ frozen.weight.T, atol=1e-6)
            assert torch.allclose(h[..., dim // 2:], trained.proj_in(frames), atol=1e-6)
        losses = [json.loads(ln)["loss"] for ln in (tmp_path / proj / "metrics.jsonl").read_text().splitlines()
                  if json.loads(ln)["split"] == "train"]
        assert np.mean(losses[-2:]) < losses[0]  # the rest of the prior learns
        card = (tmp_path / proj / "README.md").read_text()
        assert ("fixed random orthogonal projection" in card) == (proj != "learned")
        assert ("beside a learned one" in card) == (proj == "split")
    for proj in ("fixed", "split"):
        with pytest.raises(ConfigError, match="model.input_proj"):
            cfg(objective="mlm", input_proj=proj)  # reads codes only
    with pytest.raises(ConfigError, match="model.frame_conv"):
        cfg(objective="mlm", frame_conv=True)


def test_harmonic_stacking_reads_each_band_beside_its_harmonics():
    """`conv_harmonics`: channel j of the band convolution at band b reads band b + 12 log2 h_j (Bittner et al.'s
    harmonic CQT), zero past the ends; a note's partials land on one band of the stack, whatever its pitch."""
    m = Prior(cfg(inputs="frames", frame_conv=True, conv_harmonics=(0.5, 1, 2, 3), frame_dim=80, frame_bands=40,
                  conv_channels=4))
    assert m.proj_conv.shifts == [-12, 0, 12, 19] and m.proj_conv.conv.in_channels == 2 * 4
    x = torch.zeros(1, 2, 40)
    x[0, 0, 25] = 1.0  # frame 0, band 25
    x[0, 1, 5] = 2.0   # frame 1, band 5
    st = m.proj_conv.stack(x).view(1, 2, 4, 40)
    hot = {(s, j, b) for s, j, b in (st != 0).nonzero()[:, 1:].tolist()}
    # band b reads band b + shift: band 25 seen from 37 (as its subharmonic), 25, 13 (octave) and 6 (third harmonic)
    assert hot == {(0, 0, 37), (0, 1, 25), (0, 2, 13), (0, 3, 6), (1, 0, 17), (1, 1, 5)}
    assert st[0, 1, 0, 17] == 2.0
    # a harmonic tone: partials k * f0 -> bands b0 + 12 log2 k; stacked, they meet at b0 in channels 1-3
    b0 = 4
    tone_frame = torch.zeros(1, 1, 40)
    for k in (1, 2, 3):
        tone_frame[0, 0, b0 + round(12 * np.log2(k))] = 1.0
    one = Prior(cfg(inputs="frames", frame_conv=True, conv_harmonics=(1, 2, 3), frame_dim=40, frame_bands=40))
    assert one.proj_conv.stack(tone_frame)[0, :, b0].tolist() == [1.0, 1.0, 1.0]
    with torch.no_grad():
        assert m.embed_inputs(torch.randn(3, 5, 80)).shape == (3, 5, 32)
    with pytest.raises(ConfigError, match="model.conv_harmonics"):
        cfg(inputs="frames", conv_harmonics=(1, 2))  # without the convolution
    with pytest.raises(ConfigError, match="model.conv_harmonics"):
        cfg(inputs="frames", frame_conv=True, conv_harmonics=(0.0, 1))


def test_harmonic_stacking_needs_semitone_bands(tmp_path, store):
    from musetok.prior.train import PriorRunConfig, train_prior
    run = load_config(PriorRunConfig, None, TINY_PRIOR + ["model.inputs=frames", "model.frame_conv=true",
                                                          "model.conv_harmonics=[1,2,3]", "train.steps=2"])
    assert run.model.conv_harmonics == (1.0, 2.0, 3.0)
    with pytest.raises(ConfigError, match=r"meta.json: model.conv_harmonics .* semitone tokenizer"):
        train_prior(run, store, tmp_path / "p", progress=False)  # a mel store: its bands are not semitones
    assert not (tmp_path / "p" / "model.safetensors").exists()


def test_a_conv_front_end_shares_its_filters_across_the_bands(tmp_path, store):
    """`frame_conv`: the input map plus one convolution along each frame's bands, its band count taken from the
    store. Shifting the frames along the bands shifts the convolution's map (the same filters at every pitch); it
    trains, is saved and read back, and its card says so; beside a frozen map, the map stays frozen."""
    from musetok.prior.builder import load_prior
    from musetok.prior.train import PriorRunConfig, train_prior
    from musetok.shared.token_store import TokenStore
    torch.manual_seed(0)
    m = Prior(cfg(inputs="frames", frame_conv=True, frame_dim=40, frame_bands=20, conv_channels=4))
    conv = m.proj_conv.conv
    assert (conv.in_channels, conv.out_channels) == (2, 4) and m.proj_conv.out.in_features == 4 * 10
    frames = torch.randn(3, 5, 2, 20)
    shifted = torch.roll(frames, 2, dims=-1)  # two bands up: one step of the stride-2 map
    with torch.no_grad():
        a, b = (torch.nn.functional.gelu(conv(f.flatten(0, 1))) for f in (frames, shifted))
        h = m.embed_inputs(frames.flatten(2))
    assert torch.allclose(a[..., 2:-2], b[..., 3:-1], atol=1e-6)  # away from the edges, the map moves with the bands
    assert not torch.allclose(a[..., 2:-2], b[..., 2:-2], atol=1e-3)
    assert torch.allclose(h, m.proj_in(frames.flatten(2)) + m.proj_conv(frames.flatten(2)), atol=1e-6)
    assert h.shape == (3, 5, 32)
    wide = Prior(cfg(inputs="frames", frame_conv=True, frame_dim=40, frame_bands=20, conv_channels=4, conv_stride=4))
    assert wide.proj_conv.out.in_features == 4 * 5  # 20 bands at stride 4: 5 positions
    with torch.no_grad():
        a, b = (wide.proj_conv.conv(f.flatten(0, 1)) for f in (frames, torch.roll(frames, 4, dims=-1)))
    assert torch.allclose(a[..., 1:-1], b[..., 2:], atol=1e-6)  # four bands up: one step of the stride-4 map

    over = TINY_PRIOR + ["model.inputs=frames", "model.aux_frames=1.0", "train.steps=30", "model.max_len=32",
                         "model.frame_conv=true", "model.conv_channels=8"]
    train_prior(load_config(PriorRunConfig, None, over), store, tmp_path / "conv", progress=False)
    trained = load_prior(tmp_path / "conv")
    meta = TokenStore(store).meta
    assert trained.cfg.frame_bands == len(meta.frames_mean) and meta.frames_dim % trained.cfg.frame_bands == 0
    trained.embed_inputs(torch.randn(2, 4, trained.cfg.frame_dim)).square().sum().backward()
    assert trained.proj_conv.conv.weight.grad.abs().sum() > 0  # the filters train with the rest
    losses = [json.loads(ln)["loss"] for ln in (tmp_path / "conv" / "metrics.jsonl").read_text().splitlines()
              if json.loads(ln)["split"] == "train"]
    assert np.mean(losses[-2:]) < losses[0]
    assert "plus a convolution along their bands" in (tmp_path / "conv" / "README.md").read_text()
    with pytest.raises(ConfigError, match="model.conv_channels"):
        cfg(inputs="frames", frame_conv=True, conv_channels=0)
    with pytest.raises(ConfigError, match="model.conv_stride"):
        cfg(inputs="frames", frame_conv=True, conv_stride=8)
    with pytest.raises(ValueError, match="frame_bands"):
        Prior(cfg(inputs="frames", frame_conv=True, frame_dim=12, frame_bands=5))  # 12 is not frames of 5 bands

    fixed = Prior(cfg(inputs="frames", input_proj="fixed", frame_conv=True, frame_dim=40, frame_bands=20))
    assert not fixed.proj_in.weight.requires_grad and fixed.proj_conv.conv.weight.requires_grad
    with torch.no_grad():  # the frozen map's frames, plus what the convolution adds
        h = fixed.embed_inputs(frames.flatten(2))
    assert torch.allclose(h, frames.flatten(2) @ fixed.proj_in.weight.T + fixed.proj_conv(frames.flatten(2)), atol=1e-6)


def test_dtype_auto_uses_bf16_only_where_the_cpu_has_it(monkeypatch):
    from musetok.shared import training
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert training.autocast_dtype("float32", cuda) is None
    assert training.autocast_dtype("bfloat16", cpu) is torch.bfloat16
    assert training.autocast_dtype("auto", cuda) is torch.bfloat16
    for probe, want in ((lambda: True, torch.bfloat16), (lambda: False, None), (lambda: 1 / 0, None)):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", probe, raising=False)
        assert training.autocast_dtype("auto", cpu) is want
        assert training.autocast_dtype("float32", cpu) is None
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    assert training.autocast_dtype("auto", cpu) is None  # a torch without the probe: fp32


@pytest.mark.parametrize("amx", [True, False])
def test_dtype_auto_trains_as_the_cpu_allows(tmp_path, store, monkeypatch, caplog, amx):
    """`auto` on an AMX CPU trains exactly as `bfloat16` does; on another CPU exactly as `float32`."""
    from musetok.prior.train import PriorRunConfig, train_prior
    from musetok.shared.io import load_weights
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    weights = {}
    for dtype in ("auto", "float32", "bfloat16"):
        run = load_config(PriorRunConfig, None, TINY_PRIOR + ["train.steps=6", f"train.dtype={dtype}"])
        with caplog.at_level("INFO", logger="musetok"):
            train_prior(run, store, tmp_path / dtype, progress=False)
        weights[dtype] = load_weights(tmp_path / dtype)
        if dtype == "auto":
            assert ("bf16 autocast on cpu" if amx else "fp32 on cpu") in caplog.text
            card = (tmp_path / dtype / "README.md").read_text()
            assert f"| precision | {'bf16 autocast' if amx else 'fp32'} on cpu |" in card
    same, other = ("bfloat16", "float32") if amx else ("float32", "bfloat16")
    for k in weights["auto"]:
        torch.testing.assert_close(weights["auto"][k], weights[same][k], rtol=0, atol=0, msg=k)
    assert any(not torch.equal(weights["auto"][k], weights[other][k]) for k in weights["auto"])


def test_contrastive_is_nt_xent_over_window_pairs():
    """Each row's partner (2i <-> 2i + 1) is its positive; rows of other recordings are the negatives; rows of its
    own recording that are not its partner are left out."""
    items = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    assert abs(contrastive(torch.ones(8, 4), items, 0.1).item() - np.log(7)) < 1e-5  # nothing told apart
    assert contrastive(torch.eye(4).repeat_interleave(2, 0), items, 0.1).item() < 1e-3  # partners found
    # rows 0-3 from one recording: each sees its partner and the 4 rows of other recordings only
    shared = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])
    assert abs(contrastive(torch.ones(8, 4), shared, 0.1).item() - (np.log(5) + np.log(7)) / 2) < 1e-5
    z = torch.randn(8, 5)
    sim = F.normalize(z, dim=-1) @ F.normalize(z, dim=-1).T / 0.5
    rows = [-sim[i, i ^ 1] + torch.logsumexp(sim[i, [j for j in range(8) if j != i]], 0) for i in range(8)]
    full = contrastive(z, torch.arange(8) // 2, 0.5)
    assert torch.allclose(full, torch.stack(rows).mean(), atol=1e-5)
    swapped = torch.tensor([1, 0, 3, 2, 5, 4, 7, 6])  # the pairs listed in the other order: the same loss
    assert torch.allclose(full, contrastive(z[swapped], torch.arange(8) // 2, 0.5), atol=1e-6)


def test_aux_contrast_adds_the_pooled_windows_contrastive_loss():
    """`aux_contrast`: the loss adds w x `contrastive` of the contrast head's map of each window's last-layer states
    averaged over its valid frames (masked ones included), and the head is trained by it."""
    torch.manual_seed(0)
    m = Prior(cfg(inputs="frames", aux_frames=1.0, aux_contrast=0.5, contrast_dim=8, contrast_temperature=0.2))
    codes, frames = torch.randint(0, 16, (4, 2, 20)), torch.randn(4, 20, 12)
    items = torch.tensor([3, 3, 7, 7])
    batch = Batch(codes, frames, torch.tensor([20, 13, 20, 17]), torch.arange(4), items=items)
    out, without = with_and_without(m, batch, "aux_contrast")
    f_in, _ = heard(m, batch)
    valid = torch.arange(20)[None] < batch.lengths[:, None]
    h = m(f_in, valid).hidden
    pooled = torch.stack([h[b, :n].mean(0) for b, n in enumerate(batch.lengths.tolist())])
    assert torch.allclose(out.loss - without, 0.5 * contrastive(m.contrast_head(pooled), items, 0.2), atol=1e-5)
    out.loss.backward()
    assert m.contrast_head[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="aux_contrast"):
        compute_loss(m, Batch(codes, frames, batch.lengths, torch.arange(4)))
    with pytest.raises(ConfigError, match="aux_contrast"):
        cfg(objective="ar", aux_contrast=1.0)
    with pytest.raises(ConfigError, match="contrast_temperature"):
        cfg(aux_contrast=1.0, contrast_temperature=0.0)


def test_window_pairs_are_two_windows_of_each_recording(store):
    from musetok.prior.data import WindowSource
    from musetok.shared.token_store import TokenStore
    st = TokenStore(store)
    src = WindowSource(st, list(range(len(st))), 32, frames=True, pairs=True)
    b = src.batch(0, 3, 8)
    items = b.items.tolist()
    assert items[0::2] == items[1::2] and len(set(items[0::2])) == 4  # 4 recordings, none twice (10 to draw from)
    assert not torch.equal(b.frames[0], b.frames[1])  # two windows, not one twice
    # the windows are the store's: each row is a stretch of its item's frames
    for row, j in enumerate(items):
        whole = st.frames_window(j, 0, st.items[j].length)
        n = int(b.lengths[row])
        assert any(np.array_equal(whole[s:s + n], b.frames[row, :n].numpy()) for s in range(len(whole) - n + 1))
    few = WindowSource(st, [3, 5], 32, frames=True, pairs=True).batch(0, 0, 8)  # 4 pairs from 2 recordings
    assert set(few.items.tolist()) <= {3, 5} and few.items.tolist()[0::2] == few.items.tolist()[1::2]  # store ids
    with pytest.raises(ValueError, match="even"):
        src.batch(0, 0, 7)
    assert src.batch(0, 3, 8, slice(4, 8)).items.tolist() == items[4:]  # a rank's rows keep their pairs


def test_an_aux_contrast_prior_trains_and_says_so(tmp_path, store):
    r, card = _train_frames_prior(tmp_path, store, "model.aux_contrast=1.0", "train.batch_size=4")
    assert np.isfinite(r.valid_loss) and r.valid_accuracy > 0
    assert "| reads -> predicts | frames -> codes + 1 x the other window of its recording" in card
    with pytest.raises(ConfigError, match="batch_size 3"):
        _train_frames_prior(tmp_path / "odd", store, "model.aux_contrast=1.0", "train.batch_size=3")


@pytest.mark.parametrize("objective", ["mlm", "mlm:frames", "masked_frames", "ar", "next_frames"])
@pytest.mark.parametrize("lengths", [[20, 20], [20, 13]])
def test_the_training_forward_compiles_to_one_graph(objective, lengths):
    """`train.compile`: the loss's forward traces as one graph (no data-dependent branch on the mask or the kept
    positions inside it; those are handled in `compute_loss`, outside), with or without padding, and gives the
    eager loss and gradients."""
    objective, _, inputs = objective.partition(":")
    kw = dict(inputs="frames", aux_frames=1.0, frame_conv=True, frame_bands=6) if inputs else {}
    torch.manual_seed(0)
    m = Prior(cfg(objective=objective, **kw))
    batch = frames_batch(lengths)
    eager = compute_loss(m, batch)
    eager.loss.backward()
    grads = [p.grad.clone() for p in m.parameters() if p.grad is not None]
    m.zero_grad()
    torch._dynamo.reset()
    compiled = compute_loss(torch.compile(m, backend="eager", fullgraph=True), batch)  # raises on a graph break
    compiled.loss.backward()
    assert torch.allclose(compiled.loss, eager.loss, atol=1e-5) and compiled.targets == eager.targets
    assert all(torch.allclose(p.grad, g, atol=1e-5) for p, g in zip((p for p in m.parameters() if p.grad is not None),
                                                                   grads))


def test_stacked_band_convolutions(tmp_path, store):
    """`conv_layers: 2`: a second convolution along the bands (channels to channels, stride 1) after the first, each
    followed by GELU; the map still moves with the bands, the first convolution keeps its name (checkpoints of one
    layer load as before), and the card says so."""
    torch.manual_seed(0)
    m = Prior(cfg(inputs="frames", frame_conv=True, frame_dim=80, frame_bands=40, conv_channels=4, conv_layers=2))
    fc = m.proj_conv
    assert len(fc.more) == 1 and (fc.more[0].in_channels, fc.more[0].out_channels, fc.more[0].stride) == (4, 4, (1,))
    assert fc.out.in_features == 4 * 20
    frames = torch.randn(3, 5, 2, 40)
    with torch.no_grad():
        maps = [F.gelu(fc.more[0](F.gelu(fc.conv(f.flatten(0, 1))))) for f in (frames, torch.roll(frames, 2, -1))]
        assert torch.allclose(fc(frames.flatten(2)), fc.out(maps[0].flatten(1)).reshape(3, 5, -1), atol=1e-6)
    # two bands up: one step of the map, away from the edges (where the roll wraps) and their reach through both layers
    assert torch.allclose(maps[0][..., 6:-6], maps[1][..., 7:-5], atol=1e-5)
    assert not torch.allclose(maps[0][..., 6:-6], maps[1][..., 6:-6], atol=1e-3)
    assert set(Prior(cfg(inputs="frames", frame_conv=True, frame_dim=80, frame_bands=40)).state_dict()) < \
        set(m.state_dict())
    with pytest.raises(ConfigError, match="model.conv_layers"):
        cfg(inputs="frames", frame_conv=True, conv_layers=0)
    _, card = _train_frames_prior(tmp_path, store, "model.frame_conv=true", "model.conv_layers=2",
                                  "model.conv_channels=4")
    assert "plus 2 stacked convolutions along their bands" in card


@pytest.mark.parametrize("stride,c_in,input_grad", [(2, 2, False), (1, 4, True), (3, 3, True)])
def test_band_conv_gradients_are_pytorchs(stride, c_in, input_grad):
    """`BandConv` (the weight gradient as one matmul over the unfolded input) gives `nn.Conv1d`'s output and
    gradients: weights, bias and, where the input needs one, the input's."""
    from musetok.prior.model import band_conv
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(c_in, 5, 7, stride=stride, padding=3)
    x = torch.randn(6, c_in, 23, requires_grad=input_grad)
    g = torch.randn_like(conv(x))
    grads = []
    for fn in (conv, lambda x: band_conv(conv, x)):
        conv.zero_grad()
        x.grad = None
        y = fn(x)
        (y * g).sum().backward()
        grads.append((y, conv.weight.grad.clone(), conv.bias.grad.clone(), x.grad))
    for a, b in zip(*grads):
        if a is None:
            assert b is None and not input_grad
        else:
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as autocast runs conv1d: in bf16, the gradients in fp32
        y_ref, y = conv(x), band_conv(conv, x)
    assert y.dtype == y_ref.dtype == torch.bfloat16
    torch.testing.assert_close(y, y_ref)
    conv.zero_grad()
    (y.float() * g).sum().backward()
    assert conv.weight.grad.dtype == torch.float32
    torch.testing.assert_close(conv.weight.grad, grads[0][1], rtol=0.05, atol=0.05 * grads[0][1].abs().max().item())


def test_a_fixed_conv_map_to_the_width_stays_as_drawn_while_the_filters_train(tmp_path, store):
    """`conv_out_fixed`: the band convolution's linear map to the width is frozen at its draw; its filters, and the
    rest of the prior, train."""
    from musetok.prior.builder import load_prior
    from musetok.prior.train import PriorRunConfig, train_prior
    over = TINY_PRIOR + ["model.inputs=frames", "model.aux_frames=1.0", "train.steps=15", "model.max_len=32",
                         "model.frame_conv=true", "model.conv_channels=4", "model.conv_out_fixed=true"]
    run = load_config(PriorRunConfig, None, over)
    train_prior(run, store, tmp_path / "p", progress=False, stop_at=1)
    early = load_prior(tmp_path / "p")
    r = train_prior(run, store, tmp_path / "p", resume=True, progress=False)
    late = load_prior(tmp_path / "p")
    assert r.steps == 15 and np.isfinite(r.valid_loss)
    assert not late.proj_conv.out.weight.requires_grad and late.proj_conv.conv.weight.requires_grad
    assert torch.equal(early.proj_conv.out.weight, late.proj_conv.out.weight)
    assert torch.equal(early.proj_conv.out.bias, late.proj_conv.out.bias)
    assert not torch.equal(early.proj_conv.conv.weight, late.proj_conv.conv.weight)  # the filters learn
    assert not torch.equal(early.proj_in.weight, late.proj_in.weight)
    assert "(its map to the width fixed at random)" in (tmp_path / "p" / "README.md").read_text()
    with pytest.raises(ConfigError, match="model.conv_out_fixed"):
        cfg(inputs="frames", conv_out_fixed=True)


# -- the weight average (train.ema_decay) ------------------------------------------------------------------
def test_weight_average_is_the_bias_corrected_mean_of_the_weights_seen():
    from musetok.shared.training import weight_average
    net = torch.nn.Linear(3, 2)
    decay = 0.9
    avg = weight_average(net, decay)
    seen = []
    for i in range(5):
        with torch.no_grad():
            net.weight.copy_(torch.randn(2, 3) * (i + 1))
        seen.append(net.weight.detach().clone())
        avg.update_parameters(net)
    w = torch.tensor([decay ** (len(seen) - 1 - i) for i in range(len(seen))])
    want = sum(wi * s for wi, s in zip(w, seen)) / w.sum()
    torch.testing.assert_close(avg.module.weight, want)
    assert weight_average(net, 0.0) is None


def test_ema_prior_saves_the_average_and_resumes_exactly(tmp_path, store):
    from musetok.prior.train import PriorRunConfig, train_prior
    from musetok.shared.io import load_weights
    over = ["train.steps=30", "train.checkpoint_every=10", "train.ema_decay=0.9"]
    run = load_config(PriorRunConfig, None, TINY_PRIOR + over)
    train_prior(run, store, tmp_path / "full", progress=False)
    saved = load_weights(tmp_path / "full")
    trained = torch.load(tmp_path / "full" / "train_state.pt", weights_only=True)["model"]
    assert any(not torch.equal(saved[k], trained[k]) for k in saved)  # the saved prior is not the last weights
    plain = load_config(PriorRunConfig, None, TINY_PRIOR + over[:2])
    train_prior(plain, store, tmp_path / "plain", progress=False)
    for k, v in torch.load(tmp_path / "plain" / "train_state.pt", weights_only=True)["model"].items():
        torch.testing.assert_close(trained[k], v, msg=k)  # averaging never touches training
    train_prior(run, store, tmp_path / "resumed", progress=False, stop_at=13)
    train_prior(run, store, tmp_path / "resumed", resume=True, progress=False)
    resumed = load_weights(tmp_path / "resumed")
    for k in saved:
        torch.testing.assert_close(saved[k], resumed[k], msg=k)
    assert "exponential moving average" in (tmp_path / "full" / "README.md").read_text()


def test_ema_errors(tmp_path, store):
    from musetok.prior.train import PriorRunConfig, train_prior
    with pytest.raises(ConfigError, match="train.ema_decay: must be in"):
        load_config(PriorRunConfig, None, ["train.ema_decay=1.0"])
    run = load_config(PriorRunConfig, None, TINY_PRIOR + ["train.steps=10", "train.checkpoint_every=5"])
    train_prior(run, store, tmp_path / "p", progress=False, stop_at=5)
    run.train.ema_decay = 0.9
    with pytest.raises(ConfigError, match="train_state.pt: this run was started without a weight average"):
        train_prior(run, store, tmp_path / "p", resume=True, progress=False)
