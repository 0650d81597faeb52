"""Training of the recommenders (the multi-stage cascade baseline; GPR itself)."""
