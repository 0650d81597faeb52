"""Evaluation: eligibility, journey history, policies, the true-world replay and its metrics."""
