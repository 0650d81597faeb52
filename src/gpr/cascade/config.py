"""Hyper-parameters of the cascade baseline: the `cascade` section of the main config."""

from __future__ import annotations

from gpr.core.config import CascadeConfig, load_config
from gpr.core.errors import GprInputError

__all__ = ["CascadeConfig", "cascade_config"]


def cascade_config(preset: str = "small", **overrides: object) -> CascadeConfig:
    """The cascade config of a preset (from its YAML), with field overrides."""
    base = load_config(preset).cascade.model_dump()
    try:
        return CascadeConfig.model_validate({**base, **overrides})
    except ValueError as e:
        raise GprInputError(str(e).splitlines()[0], field="cascade") from None
