"""API keys: created by the CLI or the admin API, stored only as SHA-256 hashes, each bound to one
tenant or to admin. A key reads `gpc_<key_id>_<secret>`: the public `key_id` finds the row, the
hash of the whole key is compared in constant time. `lookup()` caches answers for a few seconds
so a request does not cost a database round trip; revoking in this process clears the cache."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import select

from api.principal import Principal
from core.db import init_db, session_scope
from core.tables.keys import ApiKey
from core.settings import Settings

PREFIX = "gpc"
#: Seconds a lookup answer (found or not) is reused; a revocation made elsewhere shows after this.
CACHE_TTL_S = 5.0
_CACHE_MAX = 10_000


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class NewKey:
    key: str  # shown once; only its hash is stored
    key_id: str
    tenant: str | None
    name: str


class InvalidKeyRequest(ValueError):
    """A key request that cannot be honoured (bad tenant name, both tenant and admin, ...)."""


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _split(key: str) -> str | None:
    """The key_id of a well-formed key, else None."""
    parts = key.split("_", 2)  # the secret may itself contain "_"
    if len(parts) != 3 or parts[0] != PREFIX or not parts[1] or not parts[2] or len(parts[1]) > 32:
        return None
    return parts[1]


def create_key(settings: Settings, tenant: str | None = None, admin: bool = False, name: str = "") -> NewKey:
    if admin == (tenant is not None):
        raise InvalidKeyRequest("give exactly one of a tenant or admin")
    if tenant is not None and not (1 <= len(tenant) <= 200):
        raise InvalidKeyRequest("tenant must be 1 to 200 characters")
    if len(name) > 200:
        raise InvalidKeyRequest("name must be at most 200 characters")
    init_db(settings)
    key_id = secrets.token_hex(6)
    key = f"{PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"  # 256 bits of secret
    with session_scope(settings) as s:
        s.add(ApiKey(key_id=key_id, key_sha256=_hash(key), tenant=tenant, name=name))
    return NewKey(key=key, key_id=key_id, tenant=tenant, name=name)


def list_keys(settings: Settings, tenant: str | None = None) -> list[dict]:
    init_db(settings)
    q = select(ApiKey).order_by(ApiKey.created_at)
    if tenant is not None:
        q = q.where(ApiKey.tenant == tenant)
    with session_scope(settings) as s:
        return [k.to_dict() for k in s.scalars(q)]


def revoke_key(settings: Settings, key_id: str) -> bool:
    """Revoke by key_id; False if there is no such (unrevoked) key."""
    init_db(settings)
    with session_scope(settings) as s:
        row = s.get(ApiKey, key_id)
        if row is None or row.revoked_at is not None:
            return False
        row.revoked_at = _now()
    clear_cache()
    return True


# -- lookup (hot path) ----------------------------------------------------------------------
_cache: dict[tuple[str, str], tuple[float, Principal | None]] = {}
_cache_lock = threading.Lock()


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()


def lookup(settings: Settings, key: str) -> Principal | None:
    """The key's principal, or None if it is malformed, unknown or revoked."""
    digest = _hash(key)
    ck = (settings.database, digest)
    now = time.monotonic()
    hit = _cache.get(ck)
    if hit is not None and hit[0] > now:
        return hit[1]
    principal = _lookup_db(settings, key, digest)
    with _cache_lock:
        if len(_cache) >= _CACHE_MAX:  # unknown keys must not grow memory without bound
            _cache.clear()
        _cache[ck] = (now + CACHE_TTL_S, principal)
    return principal


def _lookup_db(settings: Settings, key: str, digest: str) -> Principal | None:
    key_id = _split(key)
    if key_id is None:
        return None
    with session_scope(settings) as s:
        row = s.get(ApiKey, key_id)
        if row is None or row.revoked_at is not None:
            return None
        if not hmac.compare_digest(row.key_sha256, digest):
            return None
        return Principal(tenant=row.tenant, key_id=row.key_id)


# -- the embedded default's admin key -------------------------------------------------------
def admin_key_file(settings: Settings) -> Path:
    return settings.data_dir / "admin.key"


def ensure_admin_key(settings: Settings) -> str:
    """The admin key `gpucost up` prints: reused from data_dir/admin.key (mode 0600) while it is
    still valid for this database, else created and written there."""
    path = admin_key_file(settings)
    init_db(settings)
    if path.exists():
        key = path.read_text().strip()
        p = _lookup_db(settings, key, _hash(key))
        if p is not None and p.is_admin:
            return key
    new = create_key(settings, admin=True, name="gpucost up")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(new.key + "\n")
    return new.key
