"""What a study request may hold, validated before anything is expanded."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from core.jobs.states import MAX_SEED

MAX_STUDY_JOBS = 500


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
