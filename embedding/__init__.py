"""Embedding: any clip -> per-layer vectors or frame sequences from a trained prior's hidden states."""

from musetok.embedding.corpus import EmbedResult, embed, embed_corpus, parse_layers
from musetok.embedding.embedder import Embedder, Embedding

__all__ = ["Embedder", "Embedding", "EmbedResult", "embed", "embed_corpus", "parse_layers"]
