"""Who may see the dashboard: an admin key pasted once (signed session cookie) or sent as a header.

The fleet's status is not public. A browser signs in with an admin key and gets a
signed, HttpOnly, SameSite=Strict session cookie holding only the identity name
(never the key). Scripts send the key on every request instead. Control actions
from a session carry a CSRF token; header-authenticated requests need none
(a browser cannot add that header cross-site without a CORS preflight).
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import secrets
import time
from datetime import timedelta
from pathlib import Path

from flask import Flask, Request, current_app, has_request_context, request, session
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface

from core.config import ServerConfig
from core.server import auth
from core.server.identity import ANONYMOUS, Identity
from core.server.keys import EXTENSION as KEYS_EXTENSION
from core.server.keys import key_store

log = logging.getLogger(__name__)

SECRET_FILE = ".secret_key"  # noqa: S105 - a file name, not a secret
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
_SESSION_NAME = "identity"
_SESSION_ADMIN = "admin"
_SESSION_AT = "signed_in_at"


def load_secret_key(config: ServerConfig) -> str:
    """SECRET_KEY, or one generated once under UPLOAD_DIR (0600) so every worker signs alike.

    The file appears atomically (hard link of a complete temporary file): workers
    racing at first start all end up reading the same key.
    """
    if config.secret_key:
        return config.secret_key
    path = config.upload_dir / SECRET_FILE
    if not path.exists():
        config.upload_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32))
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(tmp, path)
            log.info("dashboard: generated SECRET_KEY in %s", path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return Path(path).read_text().strip()


class ProxyAwareSessionInterface(SecureCookieSessionInterface):
    """Flask's signed cookie session, marked ``Secure`` whenever the request arrived over HTTPS.

    ``SESSION_COOKIE_SECURE`` alone covers gunicorn serving TLS itself; behind a
    TLS-terminating nginx the app sees plain HTTP and would send the cookie
    without ``Secure``. ``request.is_secure`` reflects ``X-Forwarded-Proto``
    once ``TRUSTED_PROXIES`` says the proxy may set it (``core.server.proxies``),
    and never a header from anyone else.
    """

    def get_cookie_secure(self, app: Flask) -> bool:
        return super().get_cookie_secure(app) or (has_request_context() and request.is_secure)

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        """An empty session at once for a request without cookies (every robot's API call).

        Flask opens the session of every request, and building its signing serializer for
        that was ~5 % of a status poll (BENCHMARKS.md, protection); without a cookie there
        is nothing to verify. A request with cookies is opened as Flask does.
        """
        if app.secret_key and "HTTP_COOKIE" not in request.environ:
            return self.session_class()
        return super().open_session(app, request)


def init_app(app: Flask, config: ServerConfig) -> None:
    """Session cookie settings, and the session as a credential for downloads."""
    app.secret_key = load_secret_key(config)
    app.session_interface = ProxyAwareSessionInterface()
    auth.add_identity_loader(app, browser_identity_loader)
    app.config.update(
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=bool(config.ssl_cert),
        PERMANENT_SESSION_LIFETIME=timedelta(hours=config.dashboard_session_hours),
    )


def key_from_headers() -> str | None:
    return auth.presented_key()


def _auth_enabled() -> bool:
    config: ServerConfig = current_app.extensions["dashboard_config"]
    return config.auth_enabled


def _still_admin(name: str) -> bool:
    """Revoking a name's keys ends its dashboard sessions at once, without a restart."""
    if KEYS_EXTENSION not in current_app.extensions:
        return False
    return any(record.name == name and record.admin for record in key_store().list())


def session_identity() -> Identity | None:
    """The signed-in admin of a browser session; also an identity loader for safe API reads (downloads)."""
    name = session.get(_SESSION_NAME)
    if not isinstance(name, str) or not session.get(_SESSION_ADMIN) or not _still_admin(name):
        return None
    return Identity(name, admin=True)


def browser_identity_loader() -> Identity | None:
    """A signed-in operator on the API: reads (download links), and writes that carry the page's CSRF token.

    The token in ``X-CSRF-Token`` is what lets the dashboard's own scripts upload through
    the API as the operator ("Upload a bag", tus under /files/); a page of another site
    gets neither the token nor (SameSite=Strict) the cookie, so it cannot write.
    """
    if request.method in ("GET", "HEAD") or csrf_header_ok():
        return session_identity()
    return None


def viewer() -> Identity | None:
    """The admin looking at the dashboard, or None (sign in first)."""
    if not _auth_enabled():
        return ANONYMOUS
    key = key_from_headers()
    if key is not None:
        identity = auth.identity_for_key(key) if key and KEYS_EXTENSION in current_app.extensions else None
        return identity if identity is not None and identity.admin else None
    return session_identity()


def csrf_exempt() -> bool:
    """Requests carrying a key header cannot be forged cross-site (a custom header needs a CORS preflight)."""
    return key_from_headers() is not None


def sign_in(key: str) -> Identity | None:
    """Check a pasted key; only admin keys open the dashboard."""
    usable = key.strip() and KEYS_EXTENSION in current_app.extensions
    identity = auth.identity_for_key(key.strip()) if usable else None
    if identity is None or not identity.admin:
        log.warning("dashboard: refused sign-in from %s", request.remote_addr)
        return None
    session.clear()
    session.permanent = True
    session[_SESSION_NAME] = identity.name
    session[_SESSION_ADMIN] = True
    session[_SESSION_AT] = time.time()
    session[CSRF_FIELD] = secrets.token_urlsafe(32)
    log.info("dashboard: %s signed in from %s", identity.name, request.remote_addr)
    return identity


def sign_out() -> None:
    session.clear()


def csrf_token() -> str:
    """The session's CSRF token (also protects the sign-in form, before any identity exists)."""
    token = session.get(CSRF_FIELD)
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        session[CSRF_FIELD] = token
    return token


def _csrf_matches(sent: str) -> bool:
    expected = session.get(CSRF_FIELD)
    with contextlib.suppress(TypeError):
        return isinstance(expected, str) and hmac.compare_digest(expected.encode(), sent.encode())
    return False


def csrf_ok() -> bool:
    """The session's token in the header (scripts) or the form field (the page's forms)."""
    return _csrf_matches(request.headers.get(CSRF_HEADER) or request.form.get(CSRF_FIELD) or "")


def csrf_header_ok() -> bool:
    """The token in the header only: an API body (a tus PATCH) is never parsed as a form to look for it."""
    return _csrf_matches(request.headers.get(CSRF_HEADER) or "")
