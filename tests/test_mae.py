"""MAE-style masked priors (`model.decoder_layers`): the masked positions are dropped from the lower blocks and join
the last ones as a learned mask embedding."""

import json

import pytest
import torch

from musetok.prior.config import PriorConfig
from musetok.prior.data import Batch
from musetok.prior.model import Prior
from musetok.prior.objectives import compute_loss
from musetok.shared.config import ConfigError, load_config
from tests.conftest import TINY_PRIOR

BASE = dict(objective="mlm", targets="codes", aux_frames=1.0, dim=32, layers=3, heads=2, max_len=16,
            codebook_size=8, frame_dim=20, frame_bands=10)


def mae_prior(inputs: str = "frames", **kw) -> Prior:
    torch.manual_seed(0)
    return Prior(PriorConfig(**{**BASE, "inputs": inputs, "decoder_layers": 1, **kw})).eval()


def inputs_of(prior: Prior, codes: torch.Tensor, frames: torch.Tensor):
    return {"codes": codes, "frames": frames, "codes+frames": (codes, frames)}[prior.cfg.input_kind]


@pytest.mark.parametrize("inputs,conv", [("frames", True), ("codes+frames", False), ("codes", False)])
def test_dropped_positions_are_never_read_and_rows_do_not_see_each_others_padding(inputs, conv):
    prior = mae_prior(inputs, frame_conv=conv and inputs != "codes", conv_channels=4)
    g = torch.Generator().manual_seed(1)
    codes, frames = torch.randint(0, 8, (3, 1, 16), generator=g), torch.randn(3, 16, 20, generator=g)
    drop = torch.zeros(3, 16, dtype=torch.bool)
    drop[0, 3:8] = True  # rows with 11, 14 and 16 positions left: the lower blocks pad rows to the longest
    drop[1, 10:12] = True
    valid = torch.ones(3, 16, dtype=torch.bool)
    valid[2, 13:] = False  # and a padded row
    out = prior(inputs_of(prior, codes, frames), valid, output_hidden_states=True, drop=drop)
    # what the dropped positions hold is never read
    codes2, frames2 = codes.clone(), frames.clone()
    codes2[:, 0][drop], frames2[drop] = 7, 99.0
    assert torch.equal(prior(inputs_of(prior, codes2, frames2), valid, drop=drop).hidden, out.hidden)
    # each row as it would be alone, unpadded
    for i in range(3):
        n = int(valid[i].sum())
        alone = prior(inputs_of(prior, codes[i:i + 1, :, :n], frames[i:i + 1, :n]), drop=drop[i:i + 1, :n]).hidden
        torch.testing.assert_close(alone[0], out.hidden[i, :n], atol=1e-5, rtol=1e-5)
    # the lower blocks' states are zero where dropped; from the last block on every position has a state
    assert all(bool((s[drop] == 0).all()) for s in out.hidden_states[:-1])
    assert bool((out.hidden[drop] != 0).any(-1).all())
    # the masked positions are not merely zeros: the mask embedding is what the upper block reads there
    with torch.no_grad():
        prior.mask_embed.add_(1.0)
    assert not torch.allclose(prior(inputs_of(prior, codes, frames), valid, drop=drop).hidden[drop], out.hidden[drop])


def test_without_drop_every_block_reads_every_position():
    prior = mae_prior()
    frames = torch.randn(2, 16, 20)
    plain = Prior(PriorConfig(**{**BASE, "inputs": "frames"})).eval()
    plain.load_state_dict({k: v for k, v in prior.state_dict().items() if k != "mask_embed"})
    # embedding reads every frame: the same states as the same weights without the option
    torch.testing.assert_close(prior(frames).hidden, plain(frames).hidden)
    assert "mask_embed" not in plain.state_dict()  # older checkpoints load as they are
    with pytest.raises(ValueError, match="model.decoder_layers is 0"):
        plain(frames, drop=torch.zeros(2, 16, dtype=torch.bool))


def test_the_loss_scores_the_masked_frames_from_the_uncorrupted_rest():
    prior = mae_prior().train()
    g = torch.Generator().manual_seed(2)
    codes, frames = torch.randint(0, 8, (4, 1, 16), generator=g), torch.randn(4, 16, 20, generator=g)
    batch = Batch(codes, frames, torch.full((4,), 16), torch.arange(4))
    out = compute_loss(prior, batch)
    assert 0 < out.targets < 4 * 16 and torch.isfinite(out.loss)
    out.loss.backward()
    assert prior.mask_embed.grad is not None and bool(prior.mask_embed.grad.abs().sum() > 0)
    # the same seeds mask the same spans: a second call gives the same loss
    prior.zero_grad()
    assert float(compute_loss(prior, batch).loss.detach()) == pytest.approx(float(out.loss.detach()))


def test_decoder_layers_config_errors():
    for bad, key in ((dict(decoder_layers=3), "model.decoder_layers"),    # no block left below
                     (dict(decoder_layers=-1), "model.decoder_layers"),
                     (dict(decoder_layers=1, objective="ar", aux_frames=0.0), "model.decoder_layers"),
                     (dict(decoder_layers=1, mask_fill="noise"), "model.decoder_layers"),
                     (dict(decoder_layers=1, aux_frames_layer=1), "model.aux_frames_layer")):
        with pytest.raises(ConfigError, match=key):
            PriorConfig(**{**BASE, "inputs": "frames", **bad})
    PriorConfig(**{**BASE, "inputs": "frames", "decoder_layers": 2, "aux_frames_layer": 2})  # a block that reads them


def test_compile_with_decoder_layers_is_refused_when_the_config_is_read():
    from musetok.prior.train import PriorRunConfig
    with pytest.raises(ConfigError, match=r"^train.compile: .*model.decoder_layers"):
        load_config(PriorRunConfig, "small", ["train.compile=true"], kind="prior")  # `small` ships decoder_layers 1
    run = load_config(PriorRunConfig, "small", ["train.compile=true", "model.decoder_layers=0"], kind="prior")
    assert run.train.compile and run.model.decoder_layers == 0


def test_an_mae_prior_trains_and_says_so(store, tmp_path):
    from musetok.prior.train import PriorRunConfig, train_prior
    over = TINY_PRIOR + ["model.inputs=frames", "model.aux_frames=1.0", "train.steps=30", "model.max_len=32",
                         "model.layers=2", "model.decoder_layers=1"]
    train_prior(load_config(PriorRunConfig, None, over), store, tmp_path / "p", progress=False)
    rows = [json.loads(ln) for ln in (tmp_path / "p" / "metrics.jsonl").read_text().splitlines()]
    train = [r["loss"] for r in rows if r["split"] == "train"]
    assert train[-1] < train[0]
    card = (tmp_path / "p" / "README.md").read_text()
    assert "masked frames left out of the first 1 blocks, joining at the last 1 (MAE)" in card
