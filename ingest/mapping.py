"""The mapping file: how the labels of a DCGM exporter and the tags and accounts of a billing export
become gpucost's tenant and service, and which cloud, region and instance type each GPU host is.

A YAML file, validated strictly (an unknown key or a bad pattern is an error that names the key);
without a file every GPU lands in tenant `unassigned`, service `unassigned`, on an unknown
instance priced at its GPU model's cheapest catalog price (flagged as a fallback by the worker).

    tenant:   {label: namespace, rename: {ml-prod: research}, default: shared}
    service:  {label: pod, pattern: '^(?P<service>.+?)(-[a-z0-9]{6,10})?-[a-z0-9]{5}$', default: unassigned}
    hosts:
      - {match: "dgx-*", cloud: aws, region: us-east-1, instance_type: p5.48xlarge}
    default_host: {cloud: onprem, region: local, instance_type: unknown}
    billing:
      tenant_tags: [team, tenant]
      service_tags: [service, app]
      accounts: {"123456789012": research}
      default_tenant: unassigned
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping as MappingType
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

_STRICT = ConfigDict(extra="forbid", frozen=True)


class MappingError(ValueError):
    """A mapping file that cannot be used; the message names the file and the bad key."""


class LabelRule(BaseModel):
    """Take a name from a label (first non-empty of `label`, then each of `fallback_labels`),
    optionally cut out by `pattern`'s group named after the field, renamed, else `default`."""

    model_config = _STRICT

    label: str | None = None
    fallback_labels: list[str] = Field(default_factory=list)
    pattern: str | None = None
    rename: dict[str, str] = Field(default_factory=dict)
    default: str = "unassigned"

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                compiled = re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {exc}") from exc
            if compiled.groups == 0:
                raise ValueError("needs a group (named or not) that holds the name")
        return value

    def resolve(self, labels: MappingType[str, str], default: str | None = None) -> str:
        for name in ([self.label] if self.label else []) + self.fallback_labels:
            value = labels.get(name) or ""
            if not value:
                continue
            if self.pattern:
                m = re.search(self.pattern, value)
                if m is None:
                    continue
                named = [g for g in m.groupdict().values() if g]
                value = named[0] if named else (m.group(1) or "")
                if not value:
                    continue
            return self.rename.get(value, value)
        return default or self.default


class HostPlacement(BaseModel):
    """Where a host runs, for pricing: catalog cloud, region and instance type."""

    model_config = _STRICT

    cloud: str = "onprem"
    region: str = "local"
    instance_type: str = "unknown"
    # For hosts outside Kubernetes: the tenant and service when the labels give none.
    tenant: str | None = None
    service: str | None = None


class HostRule(HostPlacement):
    match: str  # fnmatch pattern on the host name (`dgx-*`, `node-a`)


class BillingRules(BaseModel):
    model_config = _STRICT

    tenant_tags: list[str] = Field(default_factory=lambda: ["tenant", "team"])
    service_tags: list[str] = Field(default_factory=lambda: ["service", "app", "application"])
    accounts: dict[str, str] = Field(default_factory=dict)  # billing or sub-account id -> tenant
    default_tenant: str = "unassigned"
    default_service: str = "unassigned"

    def tenant_for(self, tags: MappingType[str, str], *accounts: str | None) -> str:
        for key in self.tenant_tags:
            if tags.get(key):
                return str(tags[key])
        for account in accounts:
            if account and account in self.accounts:
                return self.accounts[account]
        return self.default_tenant

    def service_for(self, tags: MappingType[str, str], fallback: str | None = None) -> str:
        for key in self.service_tags:
            if tags.get(key):
                return str(tags[key])
        return fallback or self.default_service


class SourceMapping(BaseModel):
    model_config = _STRICT

    tenant: LabelRule = Field(default_factory=lambda: LabelRule(label="namespace"))
    service: LabelRule = Field(default_factory=lambda: LabelRule(label="container", fallback_labels=["pod"]))
    hosts: list[HostRule] = Field(default_factory=list)
    default_host: HostPlacement = Field(default_factory=HostPlacement)
    billing: BillingRules = Field(default_factory=BillingRules)

    def placement(self, host: str) -> HostPlacement:
        for rule in self.hosts:
            if fnmatch.fnmatchcase(host, rule.match):
                return rule
        return self.default_host


def load_mapping(path: str | Path | None) -> SourceMapping:
    """The mapping in `path` (YAML), or the defaults when None. Raises MappingError."""
    if path is None:
        return SourceMapping()
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise MappingError(f"mapping file {path}: cannot read it: {exc}") from exc
    except yaml.YAMLError as exc:
        raise MappingError(f"mapping file {path}: not valid YAML: {exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise MappingError(f"mapping file {path}: expected a mapping at the top, got {type(data).__name__}")
    try:
        return SourceMapping.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'top'}: {e['msg']}"
                             for e in exc.errors(include_url=False)[:5])
        raise MappingError(f"mapping file {path}: {problems}") from exc
