"""The registry of job kinds: a package per kind (``spec`` + ``run`` modules, and a ``summary`` module when the kind
states its answer), registered by naming it here.

``specs()`` loads only the spec modules (no torch: what the API needs); ``kinds()`` adds the run functions
(torch and the techniques: what a worker loads once, when it starts) and the summaries.
"""
from __future__ import annotations

import importlib
import importlib.util
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
    return {name: Kind(spec, importlib.import_module(f"core.techniques.{name}.run").run, _summarize(name))
            for name, spec in specs().items()}


def _summarize(name: str):
    """The kind's ``summary.summarize`` function, or None for a kind without a summary module."""
    module = f"core.techniques.{name}.summary"
    return importlib.import_module(module).summarize if importlib.util.find_spec(module) else None


def get_kind(name: str) -> Kind:
    return kinds()[name]
