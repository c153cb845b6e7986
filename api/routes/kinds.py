"""Job kinds: what can be run, each with its params JSON Schema and a runnable example spec."""

from __future__ import annotations

from fastapi import APIRouter

from api.problems import Problem
from api.schemas import KindOut
from core.techniques import specs
from core.techniques.base import KindSpec

router = APIRouter(prefix="/v1/kinds", tags=["kinds"])


def _out(kind: KindSpec) -> KindOut:
    return KindOut(
        name=kind.name,
        description=kind.description,
        params_schema=kind.params.model_json_schema(),
        example={"kind": kind.name, "params": kind.example, "seed": 0, "device": "auto"},
    )


@router.get("", response_model=list[KindOut])
def list_kinds():
    return [_out(k) for k in specs().values()]


@router.get("/{kind}", response_model=KindOut)
def get_kind(kind: str):
    if kind not in specs():
        raise Problem(404, f"kind {kind!r} not found; known kinds: {sorted(specs())}")
    return _out(specs()[kind])
