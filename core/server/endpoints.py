"""Marks on views and blueprints (``auth.public``, ``limits.exempt``), read once per endpoint.

Views and blueprints are fixed once the app serves, so whether an endpoint carries a mark is
decided at its first request and remembered per app: the hooks that ask run on every request.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from flask import current_app, request

EXTENSION = "endpoint_marks"
Target = TypeVar("Target", bound=Any)


def mark(target: Target, attribute: str) -> Target:
    """Set ``attribute`` on a view function or a whole blueprint."""
    setattr(target, attribute, True)
    return target


def is_marked(attribute: str, *, static: Callable[[str], bool]) -> bool:
    """Whether the current request's endpoint counts as ``static`` or its view or one of its blueprints is marked."""
    endpoint = request.endpoint or ""
    decided: dict[tuple[str, str], bool] = current_app.extensions.setdefault(EXTENSION, {})
    found = decided.get((attribute, endpoint))
    if found is None:
        found = decided[(attribute, endpoint)] = static(endpoint) or _carries(endpoint, attribute)
    return found


def _carries(endpoint: str, attribute: str) -> bool:
    if getattr(current_app.view_functions.get(endpoint), attribute, False):
        return True
    return any(getattr(current_app.blueprints.get(name), attribute, False) for name in request.blueprints)
