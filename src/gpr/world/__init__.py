"""The simulated ad world: generator, logging cascade and the hidden ground truth."""

from gpr.world.generate import generate_world
from gpr.world.truth import Truth

__all__ = ["Truth", "generate_world"]
