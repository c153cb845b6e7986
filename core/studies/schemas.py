"""What a study request may hold, validated before anything is expanded."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from core.jobs.states import MAX_SEED

MAX_STUDY_JOBS = 500
MAX_KEY_DEPTH = 8  # a dotted key's parts: params nest two or three deep (``model.config.n_layer``)
MAX_VALUE_DEPTH = 32  # nesting of a value (a model config's own dicts and lists)
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def _key_problem(key: str) -> str | None:
    """Why a dotted path is no param path, judged without recursion: a grid key of 2,000 parts is refused here."""
    parts = key.split(".")
    if len(parts) > MAX_KEY_DEPTH:
        return f"{len(parts)} parts, more than {MAX_KEY_DEPTH}"
    bad = next((p for p in parts if not _KEY.fullmatch(p)), None)
    return None if bad is None else f"{bad[:64]!r} is not a param name"


def nesting(value: Any) -> int:
    """How deep lists and dicts nest in ``value``, walked without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, level)
            if level <= MAX_VALUE_DEPTH:  # deeper is refused anyway: stop walking
                stack.extend((child, level + 1) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


def _checked_overrides(where: str, key: str, values: list[Any]) -> None:
    """``ValueError`` naming ``where`` and the key when the key is no param path or a value nests too deep."""
    shown = key[:80] + ("..." if len(key) > 80 else "")
    if (problem := _key_problem(key)) is not None:
        raise ValueError(f"{where} key {shown!r}: {problem}")
    if any(nesting(v) > MAX_VALUE_DEPTH for v in values):
        raise ValueError(f"{where} key {shown!r}: a value nests more than {MAX_VALUE_DEPTH} deep")


class StudyRequest(BaseModel):
    """A question asked of several settings over several seeds. Settings come from ``grid`` (every combination of
    the values, applied to ``base``) or from ``settings`` (explicit overrides of ``base``), or ``base`` alone.
    Keys may be dotted paths into nested params (``sweep.steps``)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    kind: str = Field(max_length=64)
    base: dict[str, Any] = Field(default_factory=dict, description="params shared by every setting")
    grid: dict[str, list[Any]] | None = Field(None, description="param -> values; every combination is a setting")
    settings: list[dict[str, Any]] | None = Field(
        None, min_length=1, max_length=MAX_STUDY_JOBS, description="explicit param overrides, one per setting"
    )
    seeds: list[Annotated[int, Field(ge=0, le=MAX_SEED)]] = Field(
        default_factory=lambda: [0], min_length=1, max_length=100
    )
    baseline: int = Field(0, ge=0, description="index of the setting the others are compared with")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    timeout_s: int = Field(3600, ge=1, le=24 * 3600)

    @field_validator("base")
    @classmethod
    def _base_bounded(cls, base: dict[str, Any]) -> dict[str, Any]:
        if nesting(base) > MAX_VALUE_DEPTH + 1:
            raise ValueError(f"nests more than {MAX_VALUE_DEPTH} deep")
        return base

    @field_validator("grid")
    @classmethod
    def _grid_paths(cls, grid: dict[str, list[Any]] | None) -> dict[str, list[Any]] | None:
        """Keys are dotted param paths of a few parts; values of bounded nesting (each a list of candidates)."""
        for key, values in (grid or {}).items():
            _checked_overrides("grid", key, values)
        return grid

    @field_validator("settings")
    @classmethod
    def _settings_paths(cls, settings: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        for i, overrides in enumerate(settings or []):
            for key, value in overrides.items():
                _checked_overrides(f"settings[{i}]", key, [value])
        return settings
