"""The registry of job kinds: one module per technique, registered by naming it here."""
from __future__ import annotations

import importlib
from functools import lru_cache

from core.techniques.base import Kind

KIND_MODULES = (
    "embedding_dim",
    "init_averaging",
    "contrastive_accumulation",
    "gradnorm_gan",
    "momentum_accumulation",
    "vae_density",
    "gradient_penalty_bound",
    "eg_stepsize",
)


@lru_cache
def registry() -> dict[str, Kind]:
    kinds = [importlib.import_module(f"core.techniques.{m}").KIND for m in KIND_MODULES]
    return {k.name: k for k in kinds}


def get_kind(name: str) -> Kind:
    return registry()[name]
