"""gpr: a reference implementation of GPR, the Generative Pre-trained Recommender for ads."""

__version__ = "0.1.0"
