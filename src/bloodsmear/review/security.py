"""What keeps the review server to its folder and its users.

- `safe_file(root, rel)`: a request path -> a file inside `root`, or `NotFoundError` for anything that
  would leave it: `..` parts (also percent-encoded: the path arrives decoded), absolute paths, drive
  letters, NUL bytes, symbolic links that point outside, hidden files and the review database itself.
- `AccessGuard` (ASGI middleware): bound to a non-loopback host, every request must carry the access token
  (`?token=` once - it is then kept in an HttpOnly cookie - or `Authorization: Bearer`); on loopback the
  Host header must name a loopback host (no DNS rebinding). Every write (POST, PUT, PATCH, DELETE) needs
  the page's CSRF token in `X-CSRF-Token`, a same-origin `Origin` when the browser sends one, and a body
  of at most `MAX_BODY` bytes.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from pathlib import Path, PurePosixPath
from urllib.parse import parse_qs, urlsplit

from starlette.responses import JSONResponse

from bloodsmear.review.store import DB_FILE, NotFoundError

MAX_BODY = 1_000_000
TOKEN_COOKIE = "bloodsmear_token"
_UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def new_token() -> str:
    return secrets.token_urlsafe(24)


def safe_file(root: Path, rel: str) -> Path:
    """The file `rel` (a posix path relative to `root`) if it lies inside `root` after resolving links."""
    if not rel or "\x00" in rel or "\\" in rel or ":" in rel:
        raise NotFoundError(f"no file {rel!r}")
    parts = PurePosixPath(rel).parts
    if PurePosixPath(rel).is_absolute() or any(p in ("..", ".") or p.startswith(".") for p in parts):
        raise NotFoundError(f"no file {rel!r}")
    if parts and parts[-1].startswith(DB_FILE):
        raise NotFoundError(f"no file {rel!r}")
    base = root.resolve()
    path = (base / Path(*parts)).resolve()
    if not path.is_relative_to(base) or not path.is_file():
        raise NotFoundError(f"no file {rel!r}")
    return path


def _host_of(value: str) -> str:
    """'127.0.0.1:8765' -> '127.0.0.1'; '[::1]:80' -> '::1'."""
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class AccessGuard:
    """ASGI middleware enforcing the rules in the module's docstring."""

    def __init__(self, app, *, csrf_token: str, token: str | None) -> None:
        self.app = app
        self.csrf = csrf_token
        self.token = token

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        method = scope.get("method", "GET")
        set_cookie = False
        if self.token is None:
            if not is_loopback(_host_of(headers.get("host", "localhost"))):
                return await self._deny(scope, receive, send, 403, "this server answers to localhost only")
        else:
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            given = (query.get("token") or [None])[0]
            auth = headers.get("authorization", "")
            cookies = dict(c.strip().split("=", 1) for c in headers.get("cookie", "").split(";") if "=" in c)
            candidates = [given, auth[7:] if auth.lower().startswith("bearer ") else None, cookies.get(TOKEN_COOKIE)]
            if not any(c and hmac.compare_digest(c, self.token) for c in candidates):
                return await self._deny(scope, receive, send, 401, "access token missing or wrong "
                                                                   "(open the address the review command printed)")
            set_cookie = bool(given)
        if method in _UNSAFE:
            if not hmac.compare_digest(headers.get("x-csrf-token", ""), self.csrf):
                return await self._deny(scope, receive, send, 403, "missing or wrong X-CSRF-Token")
            origin = headers.get("origin")
            if origin and origin != "null" and urlsplit(origin).netloc != headers.get("host", ""):
                return await self._deny(scope, receive, send, 403, "cross-site request refused")
            if int(headers.get("content-length") or 0) > MAX_BODY:
                return await self._deny(scope, receive, send, 413, f"request body over {MAX_BODY} bytes")
            body, more = b"", True  # read (at most MAX_BODY + 1 bytes, whatever the header said), then replay
            while more:
                message = await receive()
                body += message.get("body", b"")
                more = message.get("more_body", False)
                if len(body) > MAX_BODY:
                    return await self._deny(scope, receive, send, 413, f"request body over {MAX_BODY} bytes")
            replayed = False

            async def receive():  # noqa: F811 - the request's body, once, for the app
                nonlocal replayed
                if replayed:
                    return {"type": "http.disconnect"}
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
        if not set_cookie:
            return await self.app(scope, receive, send)

        async def send_with_cookie(message):
            if message["type"] == "http.response.start":
                cookie = f"{TOKEN_COOKIE}={self.token}; HttpOnly; SameSite=Strict; Path=/"
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"set-cookie", cookie.encode("latin-1"))]}
            await send(message)
        return await self.app(scope, receive, send_with_cookie)

    @staticmethod
    async def _deny(scope, receive, send, status: int, detail: str):
        return await JSONResponse({"detail": detail}, status_code=status)(scope, receive, send)
