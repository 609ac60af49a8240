"""What stands between ``retrieve serve`` and a browser or a network: the Host allow-list (a
page on another site cannot reach a loopback service through a DNS name of its own: DNS
rebinding), the refusal of cross-origin requests that change something or cost work (a form on
another site posting to /enroll), and the access token that writes need when one is set."""

from __future__ import annotations

import hmac
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import HTTPException, Security
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import Headers

TOKEN_ENV = "RETRIEVE_TOKEN"
TOKEN_HELP = (
    "The service's access token (retrieve serve --token or $RETRIEVE_TOKEN), sent as "
    "'Authorization: Bearer TOKEN'; writes (enrol, remove) need it when one is set."
)
ANY_ADDRESS = "<any IP address>"  # in an allow-list: a Host that is an IP address (not a name)
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARDS = frozenset({"", "0.0.0.0", "::"})
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_DEFAULT_PORTS = {"http": 80, "https": 443}

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def default_hosts(bind: str) -> set[str]:
    """The Host names a service bound to ``bind`` answers to by default: loopback's, and the
    bound address; bound to every address (0.0.0.0, ::), also this machine's names and any IP
    address (a rebinding attack needs a DNS name of its own)."""
    hosts = set(LOOPBACK_NAMES)
    if bind in WILDCARDS:
        hosts |= {socket.gethostname().lower(), socket.getfqdn().lower(), ANY_ADDRESS}
    else:
        hosts.add(bind.lower())
    return hosts


def needs_token(bind: str) -> bool:
    """Whether ``bind`` is reachable from other machines (anything but a loopback address or a
    name that resolves only to loopback ones)."""
    if bind in WILDCARDS:
        return True
    try:
        return not ipaddress.ip_address(bind).is_loopback
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(bind, None)
    except OSError:
        return True
    return not all(
        ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in found
    )


def _hostname(host: str) -> str:
    """The name or address of a Host header, without its port or brackets, in lower case."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    name, _, port = host.rpartition(":")
    return (name if name and port.isdigit() else host).rstrip(".")


def _origin(url: str) -> tuple[str, str, int | None] | None:
    """(scheme, host, port) of an origin or URL, the port None when it is the scheme's own."""
    try:
        parts = urlsplit(url.strip().lower())
        port = parts.port
    except ValueError:
        return None
    if not parts.scheme or not parts.hostname:
        return None
    return parts.scheme, parts.hostname, None if port == _DEFAULT_PORTS.get(parts.scheme) else port


class Guard:
    """ASGI middleware: 400 for a Host header not in ``hosts`` ("*": any); 403 for a request
    that is not GET, HEAD or OPTIONS and comes from another origin (its Origin header is not
    the service's own, or Sec-Fetch-Site says so). Requests without those headers (curl,
    scripts) are not a browser's and pass."""

    def __init__(self, app: App, hosts: Iterable[str]) -> None:
        self.app = app
        self.hosts = {h.lower() for h in hosts}
        self.any_address = ANY_ADDRESS in self.hosts

    def _host_ok(self, host: str | None) -> bool:
        if "*" in self.hosts:
            return True
        if not host:
            return False
        name = _hostname(host)
        return name in self.hosts or (self.any_address and _is_address(name))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        host = headers.get("host")
        refusal = None
        if not self._host_ok(host):
            refusal = (
                400,
                (
                    f"Host {host!r} is not a name of this service; start it with --allow-host "
                    "NAME to answer to that one"
                ),
            )
        elif scope["method"] not in _SAFE_METHODS:
            origin = headers.get("origin")
            site = headers.get("sec-fetch-site")
            own = _origin(f"{scope.get('scheme', 'http')}://{host}")
            if (origin is not None and (_origin(origin) is None or _origin(origin) != own)) or (
                site in ("cross-site", "same-site")
            ):
                refusal = 403, f"cross-origin request from {origin or site!r} refused"
        if refusal is None:
            await self.app(scope, receive, send)
            return
        status, detail = refusal
        await JSONResponse({"detail": detail}, status_code=status)(scope, receive, send)


_BEARER = HTTPBearer(auto_error=False, scheme_name="token", description=TOKEN_HELP)


def token_check(token: str) -> Callable[..., None]:
    """A FastAPI dependency: 401 unless the request carries ``Authorization: Bearer token``."""
    expected = token.encode("utf-8")

    def check(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_BEARER)] = None,
    ) -> None:
        given = b"" if credentials is None else credentials.credentials.encode("utf-8")
        if credentials is None or not hmac.compare_digest(given, expected):
            raise HTTPException(
                401,
                "this service needs its access token for writes: 'Authorization: Bearer TOKEN'",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return check
