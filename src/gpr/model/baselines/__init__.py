"""Baselines in the GPR framework (same data, SIDs, trie and evaluation): SASRec and TIGER."""

from gpr.model.baselines.sasrec import SASRec
from gpr.model.baselines.tiger import TIGER

__all__ = ["SASRec", "TIGER"]
