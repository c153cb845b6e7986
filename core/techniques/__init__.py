"""The registry of job kinds: a package per kind (``spec`` + ``run`` modules, and a ``summary`` module when the kind
states its answer), registered by naming it here (or, outside this package, in the ``GRADLAB_EXTRA_KINDS`` setting).

``specs()`` loads only the spec modules (no torch: what the API needs); ``kinds()`` adds the run functions
(torch and the techniques: what a worker loads once, when it starts) and the summaries.
"""

from __future__ import annotations

import importlib
import importlib.util
from functools import lru_cache

from core.settings import get_settings
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


def _packages() -> list[str]:
    extra = [p.strip() for p in get_settings().extra_kinds.split(",") if p.strip()]
    return [f"core.techniques.{p}" for p in KIND_PACKAGES] + extra


@lru_cache
def specs() -> dict[str, KindSpec]:
    loaded = [importlib.import_module(f"{package}.spec").SPEC for package in _packages()]
    return {s.name: s for s in loaded}


@lru_cache
def kinds() -> dict[str, Kind]:
    loaded = [
        Kind(
            importlib.import_module(f"{package}.spec").SPEC,
            importlib.import_module(f"{package}.run").run,
            _summarize(package),
        )
        for package in _packages()
    ]
    return {k.name: k for k in loaded}


def _summarize(package: str):
    """The kind's ``summary.summarize`` function, or None for a kind without a summary module."""
    module = f"{package}.summary"
    return importlib.import_module(module).summarize if importlib.util.find_spec(module) else None


def get_kind(name: str) -> Kind:
    return kinds()[name]
