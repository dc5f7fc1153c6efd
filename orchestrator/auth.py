"""Who may call what, decided in one place: keys, and the host and origin rules that keep web pages out.

Pure logic. Every request and websocket handshake is judged here, in this order:

1. **Host.** The ``Host`` header must be one of the daemon's own names:
   ``localhost``, ``127.0.0.1``, ``::1``, the configured ``server.host``, the
   address the connection arrived on, and ``server.allowed_hosts``. This stops
   DNS rebinding: a page on ``evil.example`` whose name is re-pointed at
   127.0.0.1 reaches us with ``Host: evil.example``. ``"*"`` in
   ``allowed_hosts`` accepts any name (only with keys, see config). A daemon
   bound to a network address already requires keys, which a rebinding page
   cannot present; it accepts any Host unless ``allowed_hosts`` is set.
2. **Origin.** A request that carries ``Origin`` (browsers send it on every
   cross-site request, forms and ``no-cors`` fetches included, and on every
   websocket handshake) must come from the daemon's own dashboard,
   ``http(s)://NAME:PORT`` with NAME one of the names above and PORT the one
   the connection arrived on, or from ``server.allowed_origins``. "Our own
   origin" is never derived from the request's Host: under DNS rebinding Origin
   and Host are both the attacker's name. Requests without Origin (curl, the
   openai client, our CLI) are not browsers' and pass.
3. **Keys.** API keys for the inference routes (every llama-server route served
   by model, the model list and router-mode management: ``apiroutes``), admin
   keys for the admin API, feeds, metrics, slots and ``/upstream``, presented as
   ``Authorization: Bearer KEY``, ``x-api-key: KEY``, or (for browsers, whose
   websockets cannot carry headers) a ``key`` query parameter.
   Comparison is constant-time. ``/health`` and the dashboard's static files
   need no key (they hold no data); with admin keys unset, the admin routes take
   the API keys, so they are never more open than the OpenAI routes.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from orchestrator.apiroutes import needs_api_key

if TYPE_CHECKING:
    from orchestrator.config import ServerSettings

OPEN_PATHS = frozenset({"/health", "/v1/health", "/"})  # and the dashboard's files under /web/
LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")
ANY_HOST = "*"
_WILDCARD_BINDS = frozenset({"0.0.0.0", "::", ""})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_DNS_NAME = re.compile(
    r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"
)
_SHOWN_CHARS = 200  # of a header quoted back in an error


@dataclass(frozen=True)
class Origin:
    """A web origin, normalised: lower-case scheme and host, the port always explicit."""

    scheme: str
    host: str  # without brackets for IPv6
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


@dataclass(frozen=True)
class Exchange:
    """What the rules look at in one request or websocket handshake."""

    path: str
    host: str | None  # the Host header
    origin: str | None  # the Origin header
    key: str | None  # the key it presents (see presented_key)
    local: tuple[str, int] | None  # the address and port the connection arrived on: ours


@dataclass(frozen=True)
class Refusal:
    """Why an exchange is refused, as an HTTP status, an OpenAI error code and a sentence."""

    status: int
    code: str
    message: str


def normal_host(name: str) -> str:
    """A host name or address as compared here: lower case, IPv6 without brackets."""
    name = name.strip().lower()
    return name[1:-1] if name.startswith("[") and name.endswith("]") else name


def split_host_header(value: str) -> tuple[str, int | None] | None:
    """``name[:port]`` or ``[v6][:port]`` -> (normalised name, port); None if malformed."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[1:end], value[end + 1 :]
        if rest and not rest.startswith(":"):
            return None
        port_text = rest[1:] if rest else None
    else:
        name, colon, port_text_or_empty = value.partition(":")
        port_text = port_text_or_empty if colon else None
    if port_text is not None and not (port_text.isdigit() and 0 < int(port_text) <= 65535):
        return None
    if not name or host_entry_problem(name) is not None:
        return None
    return name, None if port_text is None else int(port_text)


def parse_origin(value: str) -> Origin | None:
    """``scheme://host[:port]`` -> Origin; None for anything else (``null``, a path, a bad port)."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None  # a malformed port or IPv6 literal
    scheme = parts.scheme.lower()
    if (
        scheme not in _DEFAULT_PORTS
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or parts.username is not None
    ):
        return None
    if host_entry_problem(parts.hostname) is not None:
        return None
    return Origin(scheme, parts.hostname.lower(), port or _DEFAULT_PORTS[scheme])


def host_entry_problem(entry: str) -> str | None:
    """Why ``entry`` is not a host name or address (for server.allowed_hosts), or None."""
    name = normal_host(entry)
    if name == ANY_HOST:
        return None
    try:
        ipaddress.ip_address(name)
        return None
    except ValueError:
        pass  # not an address: it must be a DNS name
    if _DNS_NAME.match(name):
        return None
    return f"{entry!r} is not a host name or address (no scheme, port or path; '*' means any)"


@functools.lru_cache(maxsize=64)  # asked of the bind address on every request
def is_loopback(host: str) -> bool:
    host = normal_host(host)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name other than localhost: it may resolve to anything


def _shown(value: str) -> str:
    return repr(value if len(value) <= _SHOWN_CHARS else value[:_SHOWN_CHARS] + "...")


@dataclass(frozen=True)
class AccessRules:
    """The access rules of one configuration (see the module docstring)."""

    api_keys: tuple[str, ...] = ()
    admin_keys: tuple[str, ...] = ()
    bind_host: str = "127.0.0.1"
    allowed_hosts: tuple[str, ...] = ()  # normalised (see normal_host)
    allowed_origins: tuple[Origin, ...] = ()
    open_metrics: bool = False  # GET /metrics without a key (a scraper that cannot send one)

    @classmethod
    def of(cls, server: ServerSettings) -> AccessRules:
        origins = tuple(origin for text in server.allowed_origins if (origin := parse_origin(text)))
        hosts = tuple(normal_host(host) for host in server.allowed_hosts)
        return cls(
            server.api_keys, server.admin_keys, server.host, hosts, origins, server.metrics_without_key
        )

    # -- the decision ----------------------------------------------------------

    def refusal(self, exchange: Exchange) -> Refusal | None:
        """Why ``exchange`` may not proceed, or None when it may."""
        names = self._own_names(exchange.local)
        if exchange.host is not None and not self._host_allowed(exchange.host, names):
            return Refusal(
                403,
                "host_not_allowed",
                f"the Host header {_shown(exchange.host)} is not a name of this daemon (it answers to "
                f"{', '.join(sorted(names))}); a web page under another name must not reach it. If "
                "you serve it under that name (a reverse proxy, a LAN name), add the name to "
                "server.allowed_hosts",
            )
        if exchange.origin is not None and not self._origin_allowed(exchange.origin, names, exchange.local):
            own = self._own_origins(names, exchange.local)
            return Refusal(
                403,
                "origin_not_allowed",
                f"requests from the web page at {_shown(exchange.origin)} are refused: only this daemon's "
                f"own dashboard ({', '.join(own) or 'none'}) and server.allowed_origins may call it from a "
                "browser; to allow that page, add its origin to server.allowed_origins",
            )
        if not self.allows(exchange.path, exchange.key):
            return Refusal(
                401,
                "invalid_api_key",
                f"{exchange.path} needs a key: send 'Authorization: Bearer KEY' or 'x-api-key: KEY'",
            )
        return None

    def _own_names(self, local: tuple[str, int] | None) -> frozenset[str]:
        names = {*LOCAL_NAMES, *self.allowed_hosts}
        bind = normal_host(self.bind_host)
        if bind not in _WILDCARD_BINDS:
            names.add(bind)
        if local is not None:
            names.add(normal_host(local[0]))  # the address this connection reached: ours, not the client's
        names.discard(ANY_HOST)
        return frozenset(names)

    def _host_allowed(self, header: str, names: frozenset[str]) -> bool:
        if ANY_HOST in self.allowed_hosts:
            return True
        if not self.allowed_hosts and not is_loopback(self.bind_host):
            return True  # a network bind requires keys, which a rebinding page does not have
        parsed = split_host_header(header)
        return parsed is not None and parsed[0] in names

    def _origin_allowed(self, header: str, names: frozenset[str], local: tuple[str, int] | None) -> bool:
        origin = parse_origin(header)
        if origin is None:
            return False  # "null" (sandboxed frames, files) or garbage
        if origin in self.allowed_origins:
            return True
        return local is not None and origin.port == local[1] and origin.host in names

    @staticmethod
    def _own_origins(names: frozenset[str], local: tuple[str, int] | None) -> list[str]:
        if local is None:
            return []
        return [str(Origin("http", name, local[1])) for name in sorted(names)]

    # -- keys --------------------------------------------------------------------

    def keys_for(self, path: str) -> tuple[str, ...]:
        """The keys that open ``path`` (empty: open to anyone who passes the host and origin rules)."""
        if path in OPEN_PATHS or path.startswith("/web/") or (self.open_metrics and path == "/metrics"):
            return ()
        if needs_api_key(path):
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


def exposure_problem(host: str, rules: AccessRules) -> str | None:
    """Why listening on ``host`` with ``rules`` would be unsafe, or None."""
    if is_loopback(host):
        return None
    missing = [
        name
        for name, keys in (("server.api_keys", rules.api_keys), ("server.admin_keys", rules.admin_keys))
        if not keys
    ]
    if not missing:
        return None
    return (
        f"refusing to listen on {host} (not loopback) without {' and '.join(missing)}: anyone on the network "
        "could use the models and stop them; set the keys, or pass --insecure if that is really what you want"
    )
