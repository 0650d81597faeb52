"""Semantic-ID tokenizers (GPR section 2): RQ-Kmeans, RQ-VAE, RQ-Kmeans+, metrics and dedup."""

from gpr.tokenizer.dedup import dedup_index, extend_dedup, path_ids, validate_embeddings
from gpr.tokenizer.methods import (
    METHODS,
    RQKmeansPlusTokenizer,
    RQKmeansTokenizer,
    RQVAETokenizer,
    Tokenizer,
    build_tokenizer,
    load_tokenizer,
)
from gpr.tokenizer.metrics import collision_rate, cur, nmi, pas

__all__ = [
    "METHODS",
    "RQKmeansPlusTokenizer",
    "RQKmeansTokenizer",
    "RQVAETokenizer",
    "Tokenizer",
    "build_tokenizer",
    "collision_rate",
    "cur",
    "dedup_index",
    "extend_dedup",
    "load_tokenizer",
    "nmi",
    "pas",
    "path_ids",
    "validate_embeddings",
]
