"""Alert rules: REST create/read/update/delete, stored with SQLAlchemy and published on every change
to the compacted `cost.rules` topic (key: rule id; a deletion is a tombstone), which the stream
worker follows without a restart. A rule whose publication failed stays marked unpublished and is
retried in the background, so the topic converges on the database.

Also a background service started by api/app.py: it owns the producer and the retry loop."""

from __future__ import annotations

import asyncio
import logging
import time

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from core.tables.alerts import AlertRuleRow, new_id
from api.auth import Principal, principal
from core import kafka
from core.db import session_scope
from core.settings import Settings
from contracts.rules import Rule, RuleSpec

log = logging.getLogger("gpucost.api.rules")
router = APIRouter(prefix="/api/rules", tags=["alerts"])


class RuleOut(RuleSpec):
    id: str
    version: int
    published: bool
    created_at: float
    updated_at: float


def _out(row: AlertRuleRow) -> dict:
    return {**row.spec, "id": row.id, "version": row.version, "published": row.published_version == row.version,
            "created_at": row.created_at, "updated_at": row.updated_at}


def _wire(row: AlertRuleRow) -> bytes | None:
    if row.deleted:
        return None
    return Rule(**row.spec, id=row.id, version=row.version).model_dump_json().encode()


class RulePublisher:
    """Publishes every rule whose stored version is not yet on cost.rules, one at a time in order."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.producer = None
        self.lock = asyncio.Lock()
        self.wakeup = asyncio.Event()
        self.task: asyncio.Task | None = None

    def _pending(self) -> list[tuple[str, int, bytes | None]]:
        with session_scope(self.settings) as s:
            rows = s.scalars(select(AlertRuleRow).where(
                (AlertRuleRow.published_version != AlertRuleRow.version) | AlertRuleRow.deleted)
                .order_by(AlertRuleRow.updated_at))
            return [(r.id, r.version, _wire(r)) for r in rows]

    def _mark(self, rule_id: str, version: int) -> None:
        with session_scope(self.settings) as s:
            row = s.get(AlertRuleRow, rule_id)
            if row is None or row.version != version:
                return  # changed meanwhile: the next round publishes the newer version
            if row.deleted:
                s.delete(row)
            else:
                row.published_version = version

    async def publish_pending(self) -> bool:
        async with self.lock:
            try:
                if self.producer is None:
                    p = kafka.producer(self.settings)
                    await p.start()
                    self.producer = p
                for rule_id, version, value in await run_in_threadpool(self._pending):
                    await self.producer.send_and_wait(self.settings.rules_topic, key=rule_id.encode(), value=value)
                    await run_in_threadpool(self._mark, rule_id, version)
                return True
            except Exception as exc:  # broker away: stay unpublished, the loop retries
                log.warning("publishing rules to %s failed: %r", self.settings.rules_topic, exc)
                return False

    async def run(self) -> None:
        while True:
            await self.publish_pending()
            try:
                await asyncio.wait_for(self.wakeup.wait(), 5.0)
            except asyncio.TimeoutError:
                pass
            self.wakeup.clear()

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            try:
                await self.task
            except (asyncio.CancelledError, Exception):
                pass
        if self.producer is not None:
            await self.producer.stop()


async def start(app) -> None:
    await kafka.ensure_topics(app.state.settings)
    app.state.rule_publisher = RulePublisher(app.state.settings)
    app.state.rule_publisher.task = asyncio.create_task(app.state.rule_publisher.run(), name="rule-publisher")


async def stop(app) -> None:
    await app.state.rule_publisher.stop()


# -- REST -------------------------------------------------------------------------------------------
def _scoped_spec(spec: RuleSpec, p: Principal) -> RuleSpec:
    tenant = p.scope_tenant(spec.tenant)  # a tenant key's rules are always its tenant's
    return RuleSpec.model_validate({**spec.model_dump(), "tenant": tenant})


def _get_row(s, rule_id: str, p: Principal) -> AlertRuleRow:
    row = s.get(AlertRuleRow, rule_id)
    if row is None or row.deleted or not p.allows(row.tenant):
        raise HTTPException(404, f"no rule {rule_id!r}")
    return row


async def _published(request: Request) -> None:
    await request.app.state.rule_publisher.publish_pending()


@router.post("", response_model=RuleOut, status_code=201)
async def create_rule(body: RuleSpec, request: Request, p: Principal = Depends(principal)) -> dict:
    spec = _scoped_spec(body, p)
    settings = request.app.state.settings

    def write() -> str:
        with session_scope(settings) as s:
            now = time.time()
            row = AlertRuleRow(id=new_id(), tenant=spec.tenant, name=spec.name, kind=spec.kind,
                               spec=spec.model_dump(), version=1, published_version=0, created_at=now, updated_at=now)
            s.add(row)
            return row.id

    rule_id = await run_in_threadpool(write)
    await _published(request)
    return await run_in_threadpool(_read, settings, rule_id, p)


def _read(settings: Settings, rule_id: str, p: Principal) -> dict:
    with session_scope(settings) as s:
        return _out(_get_row(s, rule_id, p))


@router.get("", response_model=list[RuleOut])
def list_rules(request: Request, tenant: str | None = None, kind: str | None = None,
               p: Principal = Depends(principal)) -> list[dict]:
    q = select(AlertRuleRow).where(AlertRuleRow.deleted.is_(False)).order_by(AlertRuleRow.created_at)
    scoped = p.scope_tenant(tenant)
    if scoped is not None:
        q = q.where(AlertRuleRow.tenant == scoped)
    if kind is not None:
        q = q.where(AlertRuleRow.kind == kind)
    with session_scope(request.app.state.settings) as s:
        return [_out(r) for r in s.scalars(q)]


@router.get("/{rule_id}", response_model=RuleOut)
def get_rule(rule_id: str, request: Request, p: Principal = Depends(principal)) -> dict:
    return _read(request.app.state.settings, rule_id, p)


@router.put("/{rule_id}", response_model=RuleOut)
async def replace_rule(rule_id: str, body: RuleSpec, request: Request, p: Principal = Depends(principal)) -> dict:
    spec = _scoped_spec(body, p)
    settings = request.app.state.settings

    def write() -> None:
        with session_scope(settings) as s:
            row = _get_row(s, rule_id, p)
            if spec.tenant != row.tenant:
                raise HTTPException(422, "a rule cannot move to another tenant; create a new one")
            row.name, row.kind, row.spec = spec.name, spec.kind, spec.model_dump()
            row.version += 1
            row.updated_at = time.time()

    await run_in_threadpool(write)
    await _published(request)
    return await run_in_threadpool(_read, settings, rule_id, p)


@router.delete("/{rule_id}", status_code=204)
async def delete_rule(rule_id: str, request: Request, p: Principal = Depends(principal)) -> Response:
    settings = request.app.state.settings

    def write() -> None:
        with session_scope(settings) as s:
            row = _get_row(s, rule_id, p)
            row.deleted = True  # the row goes once its tombstone is on cost.rules
            row.version += 1
            row.updated_at = time.time()

    await run_in_threadpool(write)
    await _published(request)
    return Response(status_code=204)
