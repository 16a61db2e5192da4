"""Payload formats: gpucost's own JSON (Standard Webhooks' `type`/`timestamp`/`data` envelope),
Prometheus Alertmanager webhook version 4 (one alert per notification) and Slack Block Kit."""

from __future__ import annotations

from contracts.aggregates import iso

FORMATS = ("gpucost", "alertmanager", "slack")
ZERO_TIME = "0001-01-01T00:00:00Z"  # Alertmanager's "no end" for a firing alert
LABEL_FIELDS = ("tenant", "service", "region", "gpu_model", "model_version")  # each where the alert has one


def render(fmt: str, alert: dict, webhook_name: str, external_url: str = "") -> dict:
    return {"gpucost": gpucost, "alertmanager": alertmanager, "slack": slack}[fmt](alert, webhook_name, external_url)


def gpucost(alert: dict, webhook_name: str, external_url: str) -> dict:
    return {"type": f"alert.{alert['state']}", "timestamp": iso(alert.get("emitted_at")), "data": alert}


def _labels(alert: dict) -> dict[str, str]:
    labels = {"alertname": alert.get("rule_name") or alert["rule_kind"], "rule_kind": alert["rule_kind"],
              "rule_id": alert["rule_id"], "severity": alert.get("severity", "warning")}
    if alert.get("level"):
        labels["level"] = alert["level"]
    for f in LABEL_FIELDS:
        if alert.get(f) is not None:
            labels[f] = str(alert[f])
    return labels


def alertmanager(alert: dict, webhook_name: str, external_url: str) -> dict:
    labels = _labels(alert)
    annotations = {"summary": alert.get("summary", ""), "value": f"{alert.get('value')}",
                   "threshold": f"{alert.get('threshold')}"}
    group_labels = {"alertname": labels["alertname"]}
    return {
        "version": "4",
        "groupKey": "{}:" + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(group_labels.items())) + "}",
        "truncatedAlerts": 0,
        "status": alert["state"],
        "receiver": webhook_name,
        "groupLabels": group_labels,
        "commonLabels": labels,
        "commonAnnotations": annotations,
        "externalURL": external_url,
        "alerts": [{
            "status": alert["state"],
            "labels": labels,
            "annotations": annotations,
            "startsAt": iso(alert["starts_at"]),
            "endsAt": iso(alert["ends_at"]) if alert.get("ends_at") else ZERO_TIME,
            "generatorURL": external_url,
            "fingerprint": alert["fingerprint"],
        }],
    }


def slack(alert: dict, webhook_name: str, external_url: str) -> dict:
    firing = alert["state"] == "firing"
    title = f"{'FIRING' if firing else 'RESOLVED'}: {alert.get('rule_name') or alert['rule_kind']}"
    fields = [{"type": "mrkdwn", "text": f"*{f}*\n{alert[f]}"} for f in LABEL_FIELDS if alert.get(f) is not None]
    fields.append({"type": "mrkdwn", "text": f"*value*\n{alert.get('value'):.4g} (threshold {alert.get('threshold'):.4g})"})
    return {
        "text": f"{title}: {alert.get('summary', '')}",  # notification fallback
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": (":rotating_light: " if firing else ":white_check_mark: ") + title}},
            {"type": "section", "text": {"type": "mrkdwn", "text": alert.get("summary", "")}},
            {"type": "section", "fields": fields[:10]},
            {"type": "context", "elements": [{"type": "mrkdwn", "text":
                f"{alert['rule_kind']} · severity {alert.get('severity', 'warning')} · since {iso(alert['starts_at'])}"
                + (f" · until {iso(alert['ends_at'])}" if alert.get("ends_at") else "")
                + f" · fingerprint `{alert['fingerprint']}`"}]},
        ],
    }
