"""Which webhook URLs may be called: http(s) only, and no private, loopback, link-local or other
non-public address unless `webhook_allow_private` is set (checked on create and before each send,
since a name can start resolving elsewhere)."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit


class WebhookURLRefused(ValueError):
    """A webhook URL gpucost will not call, with the reason."""


def _public(addr: str) -> bool:
    ip = ipaddress.ip_address(addr.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_unspecified)


def check_url(url: str, allow_private: bool, resolve: bool = True) -> str:
    """Returns the URL if it may be called; raises WebhookURLRefused otherwise."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise WebhookURLRefused(f"not a URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise WebhookURLRefused(f"scheme {parts.scheme!r} refused: only http and https")
    if not parts.hostname:
        raise WebhookURLRefused("the URL has no host")
    if parts.username or parts.password:
        raise WebhookURLRefused("credentials in the URL are refused; the payload is signed instead")
    if allow_private or not resolve:
        return url
    try:
        infos = socket.getaddrinfo(parts.hostname, port or (443 if parts.scheme == "https" else 80),
                                   type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise WebhookURLRefused(f"host {parts.hostname!r} does not resolve: {exc}") from None
    for info in infos:
        addr = info[4][0]
        if not _public(addr):
            raise WebhookURLRefused(f"host {parts.hostname!r} resolves to non-public address {addr} "
                                    "(set GPUCOST_WEBHOOK_ALLOW_PRIVATE=true to allow)")
    return url
