"""The alert stage's I/O: rules arrive on the compacted `cost.rules` topic (written by the API),
alert transitions leave on `cost.alerts`, and the budget totals the evaluator has folded (the only
alert state windows cannot rebuild) live in a Faust table, `alert-totals`, whose changelog Faust
restores before the worker starts its timers. Evaluation itself is streaming/alert_eval.py.

A Faust table fits here and not in the window stage: the totals change once per key and aligned
window (about 17 writes/s at 1,000 keys), far below what a Faust table sustains
(`python -m bench.faust_table`). It is a GlobalTable written by key (`use_partitioner`): every
worker restores all of it (it is small) and the writes come from the emit timer, not from an event
of a stream."""

from __future__ import annotations

import json
import logging

from contracts.aggregates import AlertEvent, WindowAggregate
from contracts.rules import Rule
from core.kafka import consumer, read_to_end, stop_consumer
from streaming.alert_eval import AlertEvaluator

log = logging.getLogger("gpucost.alerts")


def totals_table(app):
    """The Faust table of folded budget totals: aggregate key -> JSON of its per-period totals."""
    return app.GlobalTable("alert-totals", default=None, partitions=1, use_partitioner=True,
                           key_type=bytes, value_type=bytes, help="alert evaluator's folded budget totals")


class AlertStage:
    """The evaluator wired to Kafka: windows in (from the window stage, with its watermark),
    alert transitions out on `cost.alerts`, each durable before the evaluator moves on."""

    def __init__(self, settings, alerts_topic, totals):
        self.settings = settings
        self.alerts_topic = alerts_topic  # a Faust topic (raw bytes)
        self.totals = totals  # totals_table(app)
        self.evaluator = AlertEvaluator(settings.window_size_s, settings.window_step_s, settings.allowed_lateness_s)

    async def publish(self, alerts: list[dict]) -> None:
        send = self.alerts_topic.send
        futures = [await send(key=a["fingerprint"].encode(),
                              value=AlertEvent.model_validate(a).model_dump_json().encode()) for a in alerts]
        for fut in futures:
            await fut

    async def observe(self, records: list[WindowAggregate], watermark: float) -> None:
        await self.publish(self.evaluator.observe(records, watermark))
        self.persist_totals()

    def persist_totals(self) -> None:
        for key, value in self.evaluator.book.state_records():
            raw_key = key.encode()
            if value is None:
                if raw_key in self.totals:
                    del self.totals[raw_key]
            else:
                self.totals[raw_key] = json.dumps(value).encode()

    def restore_totals(self) -> int:
        n = 0
        for raw_key, value in self.totals.items():
            if value is not None:
                self.evaluator.book.restore_state(raw_key.decode(), json.loads(value))
                n += 1
        return n

    async def run(self) -> None:
        """Started after Faust has restored the table: totals back, then the rules."""
        restored = self.restore_totals()
        log.info("budget totals restored for %d keys", restored)
        await follow_rules(self.settings, self.evaluator, self.publish)


async def follow_rules(settings, evaluator: AlertEvaluator, publish) -> None:
    """Restore the firing alerts (from cost.alerts), load every rule from the compacted cost.rules,
    mark the evaluator ready, then apply rule changes as they come (no restart). `publish(alerts)`
    sends the transitions a rule change causes (a deleted rule's alerts resolve)."""
    c = consumer(settings=settings, group_id=None)
    await c.start()
    try:
        await read_to_end(c, settings.alerts_topic, lambda r: r.value and evaluator.restore_alert(json.loads(r.value)))
        rules: dict[str, Rule | None] = {}
        await read_to_end(c, settings.rules_topic, lambda r: rules.__setitem__(r.key.decode(), _rule(r.value)))
        for rule in rules.values():
            if rule is not None:
                evaluator.set_rule(rule)
        evaluator.ready = True
        await publish(evaluator.orphans())
        log.info("alert rules loaded: %d, firing alerts restored: %d", len(evaluator.rules), len(evaluator.firing))
        while True:
            batches = await c.getmany(timeout_ms=1000)
            for records in batches.values():
                for r in records:
                    if r.topic != settings.rules_topic:
                        continue
                    rule = _rule(r.value)
                    out = evaluator.set_rule(rule) if rule else evaluator.delete_rule(r.key.decode())
                    await publish(out)
    finally:
        await stop_consumer(c)


def _rule(value: bytes | None) -> Rule | None:
    if value is None:
        return None
    try:
        return Rule.model_validate_json(value)
    except ValueError as exc:
        log.warning("ignoring an invalid rule on cost.rules: %s", exc)
        return None
