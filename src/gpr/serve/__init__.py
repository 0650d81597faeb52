"""Serving: generative recommenders as policies (value-guided, trie-constrained beam search)."""
