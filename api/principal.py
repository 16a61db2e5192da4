"""Who is asking: a Principal is bound to one tenant or to admin (an API key resolves to one,
api/keys.py), and every REST query and WebSocket subscription is filtered by it."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import HTTPException


@dataclass(frozen=True)
class Principal:
    tenant: str | None  # None: admin, sees every tenant
    key_id: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.tenant is None

    def allows(self, tenant: str) -> bool:
        return self.tenant is None or self.tenant == tenant

    def scope_tenant(self, requested: str | None) -> str | None:
        """The tenant a query is limited to; a tenant key asking for another tenant gets 403."""
        if self.tenant is None:
            return requested
        if requested is not None and requested != self.tenant:
            raise HTTPException(403, f"this key is bound to tenant {self.tenant!r}, not {requested!r}")
        return self.tenant


ADMIN = Principal(tenant=None)
