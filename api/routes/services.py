"""The model each service serves, for live recommendations: the services file the simulator ships
(ingest/services.json) plus per-service settings made in the dashboard, kept in
`data_dir/service_models.json` (key "tenant/service"). A tenant key sets its own services only."""

from __future__ import annotations

import json
import os
import threading

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from api.auth import Principal, principal
from core.settings import Settings

router = APIRouter(prefix="/api/services", tags=["recommendations"])
_lock = threading.Lock()


class ServiceModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant: str = Field(min_length=1, max_length=200)
    service: str = Field(min_length=1, max_length=200)
    model: str = Field("", max_length=200, description="a name, for people")
    params: float = Field(gt=0, le=1e13, description="model parameters, e.g. 8e9")
    precision: str = Field("bf16", pattern="^(fp32|bf16|fp16|fp8|int8|int4)$")
    prompt_tokens: int = Field(512, ge=1, le=10_000_000)
    output_tokens: int = Field(256, ge=1, le=10_000_000)
    n_layers: int | None = Field(None, ge=1, le=10_000)
    n_kv_heads: int | None = Field(None, ge=1, le=10_000)
    head_dim: int | None = Field(None, ge=1, le=65_536)
    kv_bytes_per_token: float | None = Field(None, gt=0, le=1e9)


def load_overrides(settings: Settings) -> dict[str, dict]:
    from optimizer.recommend_live import load_overrides as load

    return load(settings)


def _save(settings: Settings, data: dict) -> None:
    from optimizer.recommend_live import overrides_path

    path = overrides_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)  # readers never see half a file


@router.get("/models")
def models(request: Request, p: Principal = Depends(principal)) -> dict:
    """{"shipped": services file entries, "settings": this key's per-service settings}."""
    from optimizer.recommend_live import load_services

    mine = {k: v for k, v in load_overrides(request.app.state.settings).items()
            if p.allows(k.split("/", 1)[0])}
    return {"shipped": load_services(), "settings": mine}


@router.put("/model", status_code=204)
def set_model(body: ServiceModel, request: Request, p: Principal = Depends(principal)) -> Response:
    if not p.allows(body.tenant):
        raise HTTPException(403, f"this key is bound to tenant {p.tenant!r}")
    settings = request.app.state.settings
    if body.n_layers is None and body.kv_bytes_per_token is None:
        raise HTTPException(422, [{"loc": ["body", "kv_bytes_per_token"], "type": "value_error",
                                   "msg": "give kv_bytes_per_token, or n_layers, n_kv_heads and head_dim"}])
    with _lock:
        data = load_overrides(settings)
        data[f"{body.tenant}/{body.service}"] = body.model_dump(exclude={"tenant", "service"}, exclude_none=True)
        _save(settings, data)
    return Response(status_code=204)
