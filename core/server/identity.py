"""Who is calling: the identity every route and service call acts as.

The auth layer (``core.server.auth``) sets ``flask.g.identity`` on every request,
or rejects it with 401. Only when auth is explicitly switched off is the caller
the anonymous admin.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import g


@dataclass(frozen=True)
class Identity:
    name: str
    admin: bool = False

    def may_access(self, owner: str) -> bool:
        """A robot sees only its own uploads; an admin sees all."""
        return self.admin or owner == self.name


ANONYMOUS = Identity("anonymous", admin=True)


def current_identity() -> Identity:
    identity = g.get("identity")
    return identity if isinstance(identity, Identity) else ANONYMOUS
