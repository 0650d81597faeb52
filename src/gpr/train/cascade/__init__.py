"""The multi-stage cascade baseline: two-tower retrieval -> DIN-style pCTR/pCVR ranking -> eCPM
auction, trained on the same logs as GPR (`train_cascade`, `CascadePolicy`, `evaluate_ranking`)."""
