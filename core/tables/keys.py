"""API keys, stored only as SHA-256 hashes (api/keys.py creates and checks them)."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import DateTime, String
from sqlalchemy.orm import Mapped, mapped_column

from core.tables.base import Base


def _now() -> datetime:
    return datetime.now(timezone.utc)


class ApiKey(Base):
    __tablename__ = "api_keys"

    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    key_sha256: Mapped[str] = mapped_column(String(64))
    tenant: Mapped[str | None] = mapped_column(String(200), nullable=True, index=True)  # None: admin
    name: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    def to_dict(self) -> dict:
        return {"key_id": self.key_id, "tenant": self.tenant, "admin": self.tenant is None,
                "name": self.name, "created_at": self.created_at.isoformat() if self.created_at else None,
                "revoked": self.revoked_at is not None}
