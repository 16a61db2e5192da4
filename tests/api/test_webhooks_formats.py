"""Payload formats and the URL policy, without a network: gpucost's envelope, Prometheus
Alertmanager webhook version 4, Slack Block Kit; http(s) to public addresses only by default."""

from __future__ import annotations

import pytest

from api.webhooks.dispatcher import backoff_s, parse_retry_after
from api.webhooks.formats import render
from api.webhooks.urls import WebhookURLRefused, check_url
from tests.api.test_webhooks import an_alert


def test_alertmanager_v4_has_every_field_receivers_read():
    firing = render("alertmanager", an_alert(), "ops")
    assert set(firing) == {"version", "groupKey", "truncatedAlerts", "status", "receiver", "groupLabels",
                           "commonLabels", "commonAnnotations", "externalURL", "alerts"}
    assert firing["version"] == "4" and firing["status"] == "firing" and firing["receiver"] == "ops"
    [a] = firing["alerts"]
    assert set(a) == {"status", "labels", "annotations", "startsAt", "endsAt", "generatorURL", "fingerprint"}
    assert a["labels"]["alertname"] == "acme daily budget" and a["labels"]["tenant"] == "acme"
    assert a["startsAt"] == "2025-11-24T16:00:00Z" and a["endsAt"] == "0001-01-01T00:00:00Z"
    resolved = render("alertmanager", an_alert(state="resolved"), "ops")["alerts"][0]
    assert resolved["status"] == "resolved" and resolved["endsAt"] == "2025-11-24T16:10:00Z"


def test_slack_payload_is_blocks_with_a_text_fallback():
    msg = render("slack", an_alert(), "ops")
    assert msg["text"].startswith("FIRING: acme daily budget")
    assert [b["type"] for b in msg["blocks"]] == ["header", "section", "section", "context"]
    assert msg["blocks"][0]["text"]["type"] == "plain_text"


def test_gpucost_payload_is_the_standard_webhooks_envelope():
    alert = an_alert(state="resolved")
    assert render("gpucost", alert, "ops")["type"] == "alert.resolved"
    assert render("gpucost", alert, "ops")["data"] == alert


@pytest.mark.parametrize("url", ["http://127.0.0.1/x", "http://localhost/x", "http://10.1.2.3/x", "http://192.168.0.1/x",
                                 "http://[::1]/x", "http://169.254.169.254/latest/meta-data", "http://0.0.0.0/x",
                                 "ftp://93.184.216.34/x", "gopher://93.184.216.34/", "http:///nohost"])
def test_private_loopback_and_non_http_urls_are_refused(url):
    with pytest.raises(WebhookURLRefused):
        check_url(url, allow_private=False)


def test_public_addresses_pass_and_the_setting_allows_loopback():
    assert check_url("https://93.184.216.34/hook", allow_private=False)
    assert check_url("http://127.0.0.1:8080/hook", allow_private=True)
    with pytest.raises(WebhookURLRefused):
        check_url("ftp://127.0.0.1/", allow_private=True)  # the scheme rule holds regardless


def test_backoff_doubles_with_jitter_and_never_undercuts_retry_after():
    for attempt in range(1, 8):
        d = backoff_s(attempt, 1.0, 30.0)
        assert 0.5 * min(30, 2 ** (attempt - 1)) <= d <= min(30, 2 ** (attempt - 1))
    assert backoff_s(1, 1.0, 30.0, retry_after_s=120) == 120
    assert parse_retry_after("7", 0) == 7
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1445412470.0) == pytest.approx(10)
    assert parse_retry_after("soon", 0) is None
