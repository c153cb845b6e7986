"""The registry of job kinds: a package per kind (``spec`` + ``run`` modules), registered by naming it here.

``specs()`` loads only the spec modules (no torch: what the API needs); ``kinds()`` adds the run functions
(torch and the techniques: what a worker loads once, when it starts).
"""
from __future__ import annotations

import importlib
from functools import lru_cache

from core.techniques.base import Kind, KindSpec

KIND_PACKAGES = (
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
def specs() -> dict[str, KindSpec]:
    loaded = [importlib.import_module(f"core.techniques.{p}.spec").SPEC for p in KIND_PACKAGES]
    return {s.name: s for s in loaded}


@lru_cache
def kinds() -> dict[str, Kind]:
    return {name: Kind(spec, importlib.import_module(f"core.techniques.{name}.run").run)
            for name, spec in specs().items()}


def get_kind(name: str) -> Kind:
    return kinds()[name]
