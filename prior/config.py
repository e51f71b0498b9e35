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
    targets: Literal["", "codes", "frames"] = ""                    # "": the objective's own
    dim: int = 256
    layers: int = 4
    heads: int = 4
    mlp: Literal["gelu", "swiglu"] = "gelu"
    mlp_ratio: float = 4.0
    max_len: int = 512              # context, in code frames
    dropout: float = 0.0            # > 0 also on attention (slower: SDPA leaves its fused kernel)
    rope_base: float = 10000.0
    mask_rate: float = 0.3          # mlm / masked_frames: fraction of frames inside masked spans
    mask_span: int = 5              # consecutive frames per span (single frames are solved by smoothness)
    predict_ahead: int = 3          # next_frames: predict the frame this many steps ahead (APC's n)
    # Filled in from the token store it is trained on: inputs, outputs and the tokenizer it belongs to.
    codebook_size: int = 0
    num_codebooks: int = 1
    frame_dim: int = 0              # continuous objectives: size of one (stacked, normalised) mel frame
    tokenizer_id: str = ""
    frame_rate: float = 0.0

    def __post_init__(self):
        check(self.dim % self.heads == 0, "model.dim", f"must be divisible by model.heads ({self.heads})")
        check((self.dim // self.heads) % 2 == 0, "model.heads", "head size (dim / heads) must be even for rotary")
        check(self.layers >= 1, "model.layers", "must be >= 1")
        check(self.max_len >= 8, "model.max_len", "must be >= 8")
        check(0.0 < self.mask_rate < 1.0, "model.mask_rate", "must be in (0, 1)")
        check(self.mask_span >= 1, "model.mask_span", "must be >= 1")
        check(0.0 <= self.dropout < 1.0, "model.dropout", "must be in [0, 1)")
        check(self.predict_ahead >= 1, "model.predict_ahead", "must be >= 1")

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
        return self.target_kind == "codes"

    @property
    def uses_codes(self) -> bool:
        return self.reads_codes or self.predicts_codes

    @property
    def uses_frames(self) -> bool:
        return self.reads_frames or not self.predicts_codes
