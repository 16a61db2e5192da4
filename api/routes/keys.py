"""Key management over REST (admin keys only): create (the key is returned once), list, revoke.
`GET /api/keys/me` tells any key what it is bound to."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from api.auth import Principal, admin_only, principal
from api.keys import InvalidKeyRequest, create_key, list_keys, revoke_key

router = APIRouter(prefix="/api/keys", tags=["keys"])


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant: str | None = Field(None, min_length=1, max_length=200, description="Bind the key to this tenant.")
    admin: bool = Field(False, description="An admin key (no tenant).")
    name: str = Field("", max_length=200)


class KeyOut(BaseModel):
    key_id: str
    tenant: str | None
    admin: bool
    name: str
    created_at: str | None
    revoked: bool


class KeyCreated(BaseModel):
    key: str = Field(description="The key itself; shown only in this response.")
    key_id: str
    tenant: str | None
    admin: bool
    name: str


class Me(BaseModel):
    key_id: str | None
    tenant: str | None
    admin: bool


@router.get("/me", response_model=Me)
def me(p: Principal = Depends(principal)) -> dict:
    return {"key_id": p.key_id, "tenant": p.tenant, "admin": p.is_admin}


@router.get("", response_model=list[KeyOut])
def keys(request: Request, tenant: str | None = None, _: Principal = Depends(admin_only)) -> list[dict]:
    return list_keys(request.app.state.settings, tenant=tenant)


@router.post("", response_model=KeyCreated, status_code=201)
def create(body: KeyCreate, request: Request, _: Principal = Depends(admin_only)) -> dict:
    try:
        new = create_key(request.app.state.settings, tenant=body.tenant, admin=body.admin, name=body.name)
    except InvalidKeyRequest as exc:
        raise HTTPException(422, f"{exc}: send {{\"tenant\": \"...\"}} or {{\"admin\": true}}") from exc
    return {"key": new.key, "key_id": new.key_id, "tenant": new.tenant, "admin": new.tenant is None, "name": new.name}


@router.delete("/{key_id}", status_code=204)
def revoke(request: Request, key_id: str = Path(max_length=32), p: Principal = Depends(admin_only)) -> Response:
    if key_id == p.key_id:
        raise HTTPException(409, "an admin key cannot revoke itself; revoke it with another admin key or the CLI")
    if not revoke_key(request.app.state.settings, key_id):
        raise HTTPException(404, f"no active key with id {key_id!r}")
    return Response(status_code=204)
