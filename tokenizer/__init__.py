"""Stage 1: the VQ-VAE tokenizer (log-mel or waveform -> discrete codes)."""

from musetok.tokenizer.base import Tokenizer, TokenizerOutput
from musetok.tokenizer.builder import build_tokenizer, load_tokenizer, save_tokenizer
from musetok.tokenizer.config import QuantizerConfig, TokenizerConfig

__all__ = ["Tokenizer", "TokenizerOutput", "TokenizerConfig", "QuantizerConfig",
           "build_tokenizer", "load_tokenizer", "save_tokenizer"]
