"""The prior's own config (what its checkpoint's config.json holds).

What the prior reads (`inputs`) and what it predicts (`targets`) are two independent choices; the four
objectives are presets of them, and say whether the model is masked (bidirectional) or causal:

    objective       masked/causal   inputs (default)   targets (default)
    mlm             masked          codes              codes      BERT over codes (the Jukebox route)
    ar              causal          codes              codes      GPT over codes
    masked_frames   masked          frames             frames     Mockingjay / TERA (L1)
    next_frames     causal          frames             frames     APC (L1)

`model.inputs=frames` with code targets is the recipe of BEST-RQ, MusicFM and MuQ (continuous input,
discrete targets), here with musetok's learned VQ-VAE codes as the targets; `codes+frames` sums both.
`model.targets=random` predicts BEST-RQ's codes instead: each (unmasked) input frame through a frozen
random projection, matched to the nearest of a frozen random codebook (`rpq_*`), so the table can say
whether the learned codes are worth their training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from musetok.shared.config import check

DISCRETE = ("mlm", "ar")  # the objectives whose default inputs and targets are codes


@dataclass
class PriorConfig:
    objective: Literal["mlm", "ar", "masked_frames", "next_frames"] = "mlm"
    inputs: Literal["", "codes", "frames", "codes+frames"] = ""    # "": the objective's own
    targets: Literal["", "codes", "frames", "random"] = ""          # "": the objective's own
    dim: int = 256
    layers: int = 4
    heads: int = 4
    mlp: Literal["gelu", "swiglu", "relu"] = "gelu"
    mlp_ratio: float = 4.0
    max_len: int = 512              # context, in code frames
    dropout: float = 0.0            # on the residual branches (and, unless attn_dropout says, attention weights)
    attn_dropout: float | None = None  # attention weights; None: as dropout. > 0 is ~4x slower attention on CPU
    rope_base: float = 10000.0
    code_mix: Literal["sum", "weighted"] = "sum"   # K codebooks' input embeddings: summed, or a learned softmax
    mask_rate: float = 0.3          # mlm / masked_frames: fraction of frames inside masked spans
    mask_span: int = 5              # consecutive frames per span (single frames are solved by smoothness)
    mask_fill: Literal["bert", "noise"] = "bert"  # masked frames read: 80/10/10 zeros/other/same, or noise (MusicFM)
    # masked priors: 0 (BERT) = every block reads every position, the masked ones as `mask_fill` corrupts them.
    # N >= 1 (MAE, MAE-AST, Audio-MAE) = the first `layers - N` blocks read only the positions left unmasked; the
    # masked ones join at the last N blocks as one learned mask embedding. The lower blocks never see a corrupted
    # input (as they never do once the prior embeds a clip) and skip the masked positions' work
    decoder_layers: int = 0
    # frames -> dim: trained, a frozen random orthogonal map, or `split` (half the width each, side by side)
    input_proj: Literal["learned", "fixed", "split"] = "learned"
    # + a learned convolution along each frame's bands, summed with input_proj's map (MusicFM / MuQ's conv front-end,
    # in frequency only); with `fixed`, the frozen map keeps every direction and the convolution learns beside it
    frame_conv: bool = False
    conv_channels: int = 32         # frame_conv: channels of its convolution
    conv_stride: int = 2            # frame_conv: its step along the bands (the map to dim reads bands / stride)
    # frame_conv: the linear map from the convolution's map to dim frozen at its random init (the filters still
    # learn): a random expansion of the map keeps pitch for a probe, which the trained map gives up for timbre
    conv_out_fixed: bool = False
    conv_layers: int = 1            # frame_conv: convolutions stacked (each after the first: channels -> channels,
    #                                 kernel 7, stride 1, GELU), as MusicFM / MuQ stack two
    # frame_conv on semitone bands: harmonic stacking (Bittner et al.'s HCQT): beside each band, the bands at these
    # multiples of its frequency (12 log2 h semitones up or down) as more input channels, so one filter can match a
    # note's harmonics at every pitch; () = the bands alone. Deep-salience pitch trackers use (0.5, 1, 2, 3, 4, 5)
    conv_harmonics: tuple[float, ...] = ()
    predict_ahead: int = 3          # next_frames: predict the frame this many steps ahead (APC's n)
    aux_frames: float = 0.0         # code targets: + this weight x L1 of the masked frames (MERT's CQT target)
    # aux_frames: the block whose output predicts the frames; 0 = the last (after the final LayerNorm, with the codes),
    # 1 to layers - 1 = that block's output through a LayerNorm of its own: a lower layer kept for the spectrum (so
    # for pitch) while the blocks above serve the codes
    aux_frames_layer: int = 0
    # masked priors with a frame target (masked_frames, or aux_frames > 0): + this weight x L1 of the frames at the
    # positions left unmasked, from the same head. Masked objectives score masked positions only, so nothing asks a
    # visible position (every position, once the prior embeds a clip) to keep its own frame: this does
    aux_visible: float = 0.0
    aux_chroma: float = 0.0         # masked priors: + this weight x KL of the masked frames' chroma (semitone stores)
    aux_random: float = 0.0         # masked code-target priors: + this weight x cross-entropy on BEST-RQ's random-
    #                                 projection codes (rpq_*) of the masked clean frames, beside the tokenizer's codes
    # masked priors: + this weight x mean squared error against a teacher's targets (data2vec / M2D): an exponential
    # moving average of the prior itself reads the clean window; the mean of its top `teacher_layers` layers' outputs
    # (each normalised over time per channel) at the masked frames is regressed by a head of its own
    aux_teacher: float = 0.0
    teacher_layers: int = 2         # aux_teacher: how many of the teacher's top layers its targets average
    teacher_decay: float = 0.996    # aux_teacher: the teacher's EMA decay per training forward
    # masked priors: + this weight x VICReg's covariance term on the states of layer `aux_decorr_layer` (0 = the input
    # layer, 1 to layers - 1 = that block's output) at the visible frames, each channel standardised: the squared
    # correlations between channels summed, over dim. Probed after whitening, the prior's real-music pitch rose from
    # 0.72 to 0.81 while a standard probe reads the channels as they are: this asks the layer for decorrelated channels
    aux_decorr: float = 0.0
    aux_decorr_layer: int = 0
    # masked priors reading frames alone, with a frame head on the last block: + this weight x L1 of hidden bands.
    # At about `band_mask_rate` of the positions left unmasked, `band_mask_width` adjacent bands (the same ones in
    # each stacked frame) are read as zeros (each band's mean) and predicted by the frame head: masking across the
    # bands as well as across time (Audio-MAE / MSM-MAE's patches). A masked span is filled from its neighbours in
    # time; hidden bands only from the rest of the spectrum, by its harmonics: that asks for pitch
    aux_bands: float = 0.0
    band_mask_rate: float = 0.3
    band_mask_width: int = 12       # bands hidden at once: an octave of the semitone front-end
    # masked priors: + this weight x a contrastive loss between recordings (COLA / CLMR's InfoNCE, SimCLR's NT-Xent):
    # each batch holds two windows of each recording (`prior.data.WindowSource` pairs), each window's last-layer
    # states are averaged over its frames (masked ones too) and mapped by a head of its own to `contrast_dim`, and
    # each window must pick its partner out of the batch by cosine similarity / `contrast_temperature` (windows of
    # one recording that are not partners are left out). The masked objectives are all frame-level; this asks the
    # pooled states, what a probe reads, for what stays the same through a recording: its instruments and key
    aux_contrast: float = 0.0
    contrast_dim: int = 128
    contrast_temperature: float = 0.1
    mix_prob: float = 0.0           # masked priors reading frames: chance a training window's input gets a stretch
    mix_db: float = 5.0             #   of another mixed in, at +-mix_db dB (WavLM / MERT); its targets stay clean
    # priors reading the frames of a semitone store: each training window transposed by a whole number of semitones
    # drawn uniformly from -pitch_shift..pitch_shift (its frames moved along the bands; `prior.data.Transposer`),
    # the code targets left as they are (`kept`): more pitches for every sound in a few hours of audio. `recoded`:
    # each transposed window's code targets are the tokenizer's codes of its moved frames (training needs the
    # tokenizer), so the targets move with the input and absolute pitch stays worth predicting. `both`: two code heads,
    # one for each (the kept codes ask for a timbre that ignores the shift, the re-encoded ones for the moved sound)
    pitch_shift: int = 0
    pitch_shift_codes: Literal["kept", "recoded", "both"] = "kept"
    # priors reading frames: each training window heard at another level, its log power moved by a gain drawn
    # uniformly from -gain_db..gain_db dB (`prior.data.Leveller`; quiet frames stop at the front-end's floor), the
    # code targets left as they are. Music is mastered loud; what a prior embeds (a note, a field recording) need
    # not be, and a level the prior never read moves every normalised band at once
    gain_db: float = 0.0
    rpq_codebooks: int = 1          # targets=random: BEST-RQ's frozen random-projection quantisers
    rpq_size: int = 512             #   codes per quantiser
    rpq_dim: int = 16               #   projection size
    rpq_seed: int = 0               #   the projections and codebooks are drawn from this seed
    # Filled in from the token store it is trained on: inputs, outputs and the tokenizer it belongs to.
    codebook_size: int = 0
    num_codebooks: int = 1
    frame_dim: int = 0              # continuous objectives: size of one (stacked, normalised) mel frame
    frame_bands: int = 0            # bands per mel frame (frame_dim // frame_bands frames are stacked in one)
    chroma_dim: int = 0             # aux_chroma: 12 pitch classes x the mel frames stacked in one frame
    tokenizer_id: str = ""
    frame_rate: float = 0.0
    codes_source: str = ""          # "": the tokenizer's codes; else second-round codes (`musetok relabel`)
    corpus_level_db: float | None = None  # the store's median RMS in dBFS: embedding reads clips at this level

    def __post_init__(self):
        check(self.dim % self.heads == 0, "model.dim", f"must be divisible by model.heads ({self.heads})")
        check((self.dim // self.heads) % 2 == 0, "model.heads", "head size (dim / heads) must be even for rotary")
        check(self.layers >= 1, "model.layers", "must be >= 1")
        check(self.max_len >= 8, "model.max_len", "must be >= 8")
        check(0.0 < self.mask_rate < 1.0, "model.mask_rate", "must be in (0, 1)")
        check(self.mask_span >= 1, "model.mask_span", "must be >= 1")
        check(0.0 <= self.dropout < 1.0, "model.dropout", "must be in [0, 1)")
        check(self.attn_dropout is None or 0.0 <= self.attn_dropout < 1.0, "model.attn_dropout",
              "must be in [0, 1) or null (as model.dropout)")
        check(self.predict_ahead >= 1, "model.predict_ahead", "must be >= 1")
        check(self.aux_frames >= 0.0, "model.aux_frames", "must be >= 0")
        check(self.aux_frames == 0.0 or (self.target_kind != "frames" and not self.causal), "model.aux_frames",
              "is an extra frame target for masked code-target priors (objective mlm)")
        check(0 <= self.aux_frames_layer < self.layers, "model.aux_frames_layer",
              f"must be 0 (the last block) or a block below it, 1 to {self.layers - 1}")
        check(self.aux_frames_layer == 0 or self.aux_frames > 0, "model.aux_frames_layer",
              "says which block predicts the aux_frames target: set model.aux_frames > 0")
        check(self.aux_visible >= 0.0, "model.aux_visible", "must be >= 0")
        check(self.aux_visible == 0.0 or (not self.causal and (self.target_kind == "frames" or self.aux_frames > 0)
                                          and self.aux_frames_layer == 0), "model.aux_visible",
              "scores the unmasked frames with a masked prior's frame head (objective masked_frames, or mlm with "
              "model.aux_frames > 0 on the last block)")
        check(self.aux_chroma >= 0.0, "model.aux_chroma", "must be >= 0")
        check(self.aux_chroma == 0.0 or not self.causal, "model.aux_chroma",
              "is an extra target for masked priors (objective mlm or masked_frames)")
        check(self.aux_random >= 0.0, "model.aux_random", "must be >= 0")
        check(self.aux_random == 0.0 or (self.target_kind == "codes" and not self.causal), "model.aux_random",
              "is an extra random-projection target beside the tokenizer's codes (objective mlm, model.targets codes)")
        check(self.aux_teacher >= 0.0, "model.aux_teacher", "must be >= 0")
        check(self.aux_teacher == 0.0 or not self.causal, "model.aux_teacher",
              "is an extra target for masked priors (objective mlm or masked_frames)")
        check(self.aux_teacher == 0.0 or 1 <= self.teacher_layers <= self.layers, "model.teacher_layers",
              f"must be 1 to model.layers ({self.layers})")
        check(0.0 <= self.teacher_decay < 1.0, "model.teacher_decay", "must be in [0, 1)")
        check(self.aux_decorr >= 0.0, "model.aux_decorr", "must be >= 0")
        check(self.aux_decorr == 0.0 or not self.causal, "model.aux_decorr",
              "is an extra term for masked priors (objective mlm or masked_frames)")
        check(0 <= self.aux_decorr_layer < self.layers, "model.aux_decorr_layer",
              f"must be 0 (the input layer) or a block below the last, 1 to {self.layers - 1}")
        check(self.aux_bands >= 0.0, "model.aux_bands", "must be >= 0")
        check(self.aux_bands == 0.0 or (not self.causal and self.input_kind == "frames"
                                        and (self.target_kind == "frames" or self.aux_frames > 0)
                                        and self.aux_frames_layer == 0), "model.aux_bands",
              "hides bands of the frames a masked prior reads and scores them with its frame head (model.inputs "
              "frames; objective masked_frames, or mlm with model.aux_frames > 0 on the last block)")
        check(0.0 < self.band_mask_rate <= 1.0, "model.band_mask_rate", "must be in (0, 1]")
        check(self.band_mask_width >= 1, "model.band_mask_width", "must be >= 1")
        check(self.aux_bands == 0.0 or self.frame_bands == 0 or self.band_mask_width <= self.frame_bands,
              "model.band_mask_width", f"must be at most the frames' bands ({self.frame_bands})")
        check(0.0 <= self.mix_prob <= 1.0, "model.mix_prob", "must be in [0, 1]")
        check(self.mix_db >= 0.0, "model.mix_db", "must be >= 0")
        check(0 <= self.decoder_layers < self.layers, "model.decoder_layers",
              f"must be 0 (every block reads every position) or 1 to layers - 1 ({self.layers - 1})")
        check(self.decoder_layers == 0 or not self.causal, "model.decoder_layers",
              "leaves the masked positions out of a masked prior's lower blocks (objective mlm or masked_frames): "
              "set it to 0 for a causal objective")
        check(self.decoder_layers == 0 or self.mask_fill == "bert", "model.decoder_layers",
              "the masked positions never reach the lower blocks, so model.mask_fill has nothing to fill: set "
              "model.mask_fill: bert, or model.decoder_layers: 0")
        check(self.decoder_layers == 0 or self.aux_frames_layer == 0
              or self.aux_frames_layer > self.layers - self.decoder_layers, "model.aux_frames_layer",
              f"predicts the masked frames from a block that does not read them (model.decoder_layers "
              f"{self.decoder_layers}: blocks 1 to {self.layers - self.decoder_layers} read the unmasked ones only)")
        check(self.mask_fill == "bert" or (self.reads_frames and not self.causal), "model.mask_fill",
              "noise fills masked frames: for masked priors that read frames (model.inputs frames or codes+frames)")
        check(self.input_proj == "learned" or self.reads_frames, "model.input_proj",
              f"{self.input_proj} is the projection of the frames a prior reads (model.inputs frames or codes+frames)")
        check(not self.frame_conv or self.reads_frames, "model.frame_conv",
              "is a front-end for the frames a prior reads (model.inputs frames or codes+frames)")
        check(self.conv_channels >= 1, "model.conv_channels", "must be >= 1")
        check(self.conv_layers >= 1, "model.conv_layers", "must be >= 1")
        check(not self.conv_out_fixed or self.frame_conv, "model.conv_out_fixed",
              "freezes the band convolution's map to the width: set model.frame_conv: true")
        check(1 <= self.conv_stride <= 7, "model.conv_stride", "must be 1 to 7 (the kernel spans 7 bands)")
        check(not self.conv_harmonics or self.frame_conv, "model.conv_harmonics",
              "are the channels of the band convolution: set model.frame_conv: true")
        check(all(h > 0 for h in self.conv_harmonics), "model.conv_harmonics", "must be positive multiples")
        check(self.aux_contrast >= 0.0, "model.aux_contrast", "must be >= 0")
        check(self.aux_contrast == 0.0 or not self.causal, "model.aux_contrast",
              "is an extra term for masked priors (objective mlm or masked_frames)")
        check(self.contrast_dim >= 1, "model.contrast_dim", "must be >= 1")
        check(self.contrast_temperature > 0.0, "model.contrast_temperature", "must be > 0")
        check(self.mix_prob == 0.0 or (self.reads_frames and not self.causal), "model.mix_prob",
              "mixes windows into the frames a masked prior reads (model.inputs frames or codes+frames, "
              "objective mlm or masked_frames)")
        check(0 <= self.pitch_shift <= 24, "model.pitch_shift", "must be 0 to 24 semitones")
        check(self.pitch_shift == 0 or self.input_kind == "frames", "model.pitch_shift",
              "transposes the frames a prior reads (model.inputs frames; with codes+frames the input codes would "
              "not follow); set it to 0 for other inputs")
        check(self.pitch_shift_codes == "kept" or (self.pitch_shift > 0 and self.target_kind == "codes"),
              "model.pitch_shift_codes", "recoded and both re-encode the code targets of transposed windows: for "
              "priors that predict the tokenizer's codes (model.targets codes) with model.pitch_shift > 0")
        check(0.0 <= self.gain_db <= 60.0, "model.gain_db", "must be 0 to 60 dB")
        check(self.gain_db == 0.0 or self.reads_frames, "model.gain_db",
              "moves the level of the frames a prior reads (model.inputs frames or codes+frames); set it to 0 for "
              "other inputs")
        check(self.rpq_codebooks >= 1 and self.rpq_size >= 2 and self.rpq_dim >= 1, "model.rpq_size",
              "random-projection targets need rpq_codebooks >= 1, rpq_size >= 2, rpq_dim >= 1")

    @property
    def causal(self) -> bool:
        return self.objective in ("ar", "next_frames")

    @property
    def input_kind(self) -> str:
        return self.inputs or ("codes" if self.objective in DISCRETE else "frames")

    @property
    def target_kind(self) -> str:
        return self.targets or ("codes" if self.objective in DISCRETE else "frames")

    @property
    def reads_codes(self) -> bool:
        return "codes" in self.input_kind

    @property
    def reads_frames(self) -> bool:
        return "frames" in self.input_kind

    @property
    def predicts_codes(self) -> bool:
        """Cross-entropy over code targets: the tokenizer's (`codes`) or BEST-RQ's (`random`)."""
        return self.target_kind in ("codes", "random")

    @property
    def target_codebooks(self) -> tuple[int, int]:
        """(number of codebooks, codes per codebook) the output heads predict."""
        if self.target_kind == "random":
            return self.rpq_codebooks, self.rpq_size
        return self.num_codebooks * self.code_views, self.codebook_size

    @property
    def code_views(self) -> int:
        """How many sets of code targets a window has: 2 with `pitch_shift_codes: both` (the store's, then the
        re-encoded ones), else 1."""
        return 2 if self.pitch_shift_codes == "both" else 1  # validated: only with code targets

    @property
    def recodes(self) -> bool:
        """Training re-encodes transposed windows with the tokenizer."""
        return self.pitch_shift_codes != "kept"

    @property
    def uses_codes(self) -> bool:
        return self.reads_codes or self.target_kind == "codes"

    @property
    def uses_frames(self) -> bool:
        return (self.reads_frames or self.target_kind != "codes" or self.aux_frames > 0 or self.aux_chroma > 0
                or self.aux_random > 0)
