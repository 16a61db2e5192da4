"""The AsyncAPI 3.0 document of `/ws`: valid against the official AsyncAPI 3.0.0 JSON schema, served
publicly beside /openapi.json, and true to the wire: every kind of message the real server sends
validates against the payload schema the document gives it.

tests/api/data/asyncapi-3.0.0.schema.json is the official schema as published in the npm package
`@asyncapi/specs` 6.11.1 (`schemas/3.0.0-without-$id.json`, Apache-2.0), kept here so the test
needs no network; no PyPI package ships a maintained AsyncAPI 3 validator."""

from __future__ import annotations

import asyncio
import copy
import json
import time
from pathlib import Path

import httpx
import jsonschema_rs
import pytest
import websockets

from api import ws_protocol
from api.asyncapi import build_document
from bench.fault_harness import aggregate_record, alert_record, publish_aggregates, publish_alerts
from tests.support import Stack, async_wait_for

SCHEMA = json.loads((Path(__file__).parent / "data" / "asyncapi-3.0.0.schema.json").read_text())


def asyncapi_errors(doc: dict) -> list[str]:
    return [f"{e.instance_path}: {e.message[:200]}" for e in jsonschema_rs.validator_for(SCHEMA).iter_errors(doc)]


def payload_validator(doc: dict, message: str):
    """A validator for one message's payload, its $refs resolved inside the document."""
    payload = doc["channels"]["live"]["messages"][message]["payload"]
    return jsonschema_rs.Draft7Validator({**payload, "components": doc["components"]})


def test_the_document_is_valid_asyncapi_3():
    doc = build_document("127.0.0.1:8000")
    assert doc["asyncapi"] == "3.0.0"
    assert asyncapi_errors(doc) == []


def test_the_validator_catches_a_broken_document():
    """The check above can fail: the same validator refuses documents that break the spec."""
    doc = build_document("127.0.0.1:8000")
    for break_it in (lambda d: d["operations"]["subscribe"].update(action="publish"),  # AsyncAPI 2 word
                     lambda d: d["servers"]["api"].pop("protocol"),
                     lambda d: d["channels"]["live"]["messages"]["snapshot"].update(payload=5),
                     lambda d: d["components"]["securitySchemes"]["bearer"].update(type="password")):
        broken = copy.deepcopy(doc)
        break_it(broken)
        assert asyncapi_errors(broken), "a broken document passed"


def test_every_message_of_the_protocol_is_documented_with_an_example_that_fits_its_schema():
    doc = build_document("127.0.0.1:8000")
    messages = doc["channels"]["live"]["messages"]
    documented = {m["payload"]["$ref"].rsplit("/", 1)[1] for m in messages.values()}
    models = ws_protocol.CLIENT_MESSAGES + ws_protocol.SERVER_MESSAGES
    assert documented == {m.__name__ for m in models}
    for name, m in messages.items():
        for example in m["examples"]:
            errors = [e.message for e in payload_validator(doc, name).iter_errors(example["payload"])]
            assert errors == [], (name, errors)
    # Each operation's messages are the channel's (AsyncAPI 3: operations point into the channel).
    for op in doc["operations"].values():
        for ref in op["messages"] + op.get("reply", {}).get("messages", []):
            assert ref["$ref"].rsplit("/", 1)[1] in messages


@pytest.mark.integration
@pytest.mark.one_database
async def test_the_api_serves_the_document_publicly_and_every_message_it_sends_fits_it(kafka_broker, tmp_path, database_url):
    stack = Stack(tmp_path, database_url=database_url, GPUCOST_WS_HEARTBEAT_S="0.5")
    try:
        stack.start_api()
        r = httpx.get(stack.url + "/asyncapi.json", timeout=5)  # no key: public, like /openapi.json
        assert r.status_code == 200, r.text
        doc = r.json()
        assert asyncapi_errors(doc) == []
        assert doc["servers"]["api"]["host"] == f"127.0.0.1:{stack.port}"
        assert "/asyncapi.json" in httpx.get(stack.url + "/openapi.json", timeout=5).json()["paths"]

        now = int(time.time()) // 60 * 60
        await publish_aggregates(stack.settings, [aggregate_record("acme", "chat", now - 120, 1.5)])
        # the subscription's snapshot is what the API holds when it subscribes: wait until it holds
        # the aggregate (the snapshot is sent once; a slow consumer would leave it empty for good)
        await async_wait_for(lambda: httpx.get(stack.url + "/api/latest", headers=stack.headers, timeout=5).json(),
                             30, what="the aggregate in the API")
        seen: dict[str, list[dict]] = {}
        async with websockets.connect(stack.ws_url, additional_headers=stack.headers) as ws:
            async def read():
                async for raw in ws:
                    msg = json.loads(raw)
                    seen.setdefault(msg["type"], []).append(msg)

            reader = asyncio.create_task(read())
            for op in ({"op": "subscribe", "channel": "aggregates", "filter": {"tenant": "acme"}, "id": "a"},
                       {"op": "subscribe", "channel": "alerts", "filter": {}},
                       {"op": "subscribe", "channel": "aggregates", "filter": {"colour": "red"}},
                       {"op": "ping"}):
                await ws.send(json.dumps(op))
            await async_wait_for(lambda: any(m["data"] for m in seen.get("snapshot", [])), 20, what="snapshot with data")
            await publish_aggregates(stack.settings, [aggregate_record("acme", "chat", now - 60, 2.5)])
            await publish_alerts(stack.settings, [alert_record("acme")])
            await async_wait_for(lambda: "aggregate" in seen and "alert" in seen and "heartbeat" in seen, 30,
                                 what="a live aggregate, an alert and a heartbeat")
            await ws.send(json.dumps({"op": "unsubscribe", "id": "a"}))
            await async_wait_for(lambda: "unsubscribed" in seen, 10, what="unsubscribed")
            reader.cancel()

        types = {m.model_fields["type"].annotation.__args__[0] for m in ws_protocol.SERVER_MESSAGES}
        assert set(seen) == types, f"not every server message was exercised: {types - set(seen)}"
        for kind, msgs in seen.items():
            validator = payload_validator(doc, kind)
            for msg in msgs:
                errors = [f"{e.instance_path}: {e.message}" for e in validator.iter_errors(msg)]
                assert errors == [], (kind, msg, errors)
        assert seen["aggregate"][-1]["data"]["spend_usd"] == 2.5
        assert seen["alert"][-1]["data"]["fingerprint"] == "fp-acme"
    finally:
        stack.stop()
