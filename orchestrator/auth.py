"""Who may call what: API keys for the OpenAI routes, admin keys for the admin API and feeds.

Pure logic. Keys come as ``Authorization: Bearer KEY``, ``x-api-key: KEY``, or
(for browsers, whose websockets cannot carry headers) a ``key`` query
parameter. Comparison is constant-time. ``/health`` and the dashboard's static
files are open (they hold no data); with admin keys unset, the admin routes
take the API keys, so they are never more open than the OpenAI routes.
"""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass

OPEN_PATHS = frozenset({"/health", "/"})  # and the dashboard's files under /web/


@dataclass(frozen=True)
class AccessPolicy:
    api_keys: tuple[str, ...] = ()
    admin_keys: tuple[str, ...] = ()

    def keys_for(self, path: str) -> tuple[str, ...]:
        """The keys that open ``path`` (empty: open to anyone who can reach the port)."""
        if path in OPEN_PATHS or path.startswith("/web/"):
            return ()
        if path.startswith("/v1/"):
            return (*self.api_keys, *self.admin_keys) if self.api_keys else ()
        return self.admin_keys or self.api_keys

    def allows(self, path: str, presented: str | None) -> bool:
        keys = self.keys_for(path)
        return not keys or (presented is not None and matches(presented, keys))


def matches(presented: str, keys: tuple[str, ...]) -> bool:
    """Constant-time: every key is compared, whichever matches."""
    found = False
    for key in keys:
        found |= hmac.compare_digest(presented.encode(), key.encode())
    return found


def presented_key(authorization: str | None, x_api_key: str | None, query_key: str | None) -> str | None:
    """The key a request carries: Authorization: Bearer, else x-api-key, else ?key=."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return x_api_key or query_key or None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name other than localhost: it may resolve to anything


def exposure_problem(host: str, policy: AccessPolicy) -> str | None:
    """Why listening on ``host`` with ``policy`` would be unsafe, or None."""
    if is_loopback(host):
        return None
    missing = [
        name
        for name, keys in (("server.api_keys", policy.api_keys), ("server.admin_keys", policy.admin_keys))
        if not keys
    ]
    if not missing:
        return None
    return (
        f"refusing to listen on {host} (not loopback) without {' and '.join(missing)}: anyone on the network "
        "could use the models and stop them; set the keys, or pass --insecure if that is really what you want"
    )
