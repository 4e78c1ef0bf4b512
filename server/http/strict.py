"""Strict query strings: an unknown or misspelt query parameter is a 422 naming it, not silently ignored.

An app-wide dependency (``FastAPI(dependencies=[STRICT_QUERY])``) compares the request's query names
with the matched route's declared query parameters (FastAPI's dependant, sub-dependencies included),
so a parameter added to any route is accepted, and documented in OpenAPI, with no list to keep in
step. Routes that declare no query parameter are left alone (a cache-busting ``?t=...`` on ``/healthz``
stays harmless).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from fastapi import Depends, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from server.errors import InvalidOption

__all__ = ["STRICT_QUERY", "accepted_query_names", "reject_unknown_query", "unknown_query_message"]

_CACHE_ATTR = "_danet_query_names"


def accepted_query_names(route: APIRoute) -> frozenset[str]:
    """Aliases of the route's query parameters, its dependencies' included (computed once per route)."""
    cached: frozenset[str] | None = route.__dict__.get(_CACHE_ATTR)
    if cached is not None:
        return cached
    names: set[str] = set()
    pending: list[Dependant] = [route.dependant]
    while pending:
        dependant = pending.pop()
        names.update(param.alias for param in dependant.query_params)
        pending.extend(dependant.dependencies)
    accepted = frozenset(names)
    route.__dict__[_CACHE_ATTR] = accepted
    return accepted


def unknown_query_message(path: str, unknown: Iterable[str], accepted: Iterable[str]) -> str:
    names = sorted(accepted)
    parts = []
    for name in unknown:
        guess = difflib.get_close_matches(name, names, n=1)
        parts.append(f"{name!r}" + (f" (did you mean {guess[0]!r}?)" if guess else ""))
    noun = "parameter" if len(parts) == 1 else "parameters"
    return f"unknown query {noun} {', '.join(parts)} on {path}; accepted: {', '.join(names)}"


async def reject_unknown_query(request: Request) -> None:
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    accepted = accepted_query_names(route)
    if not accepted:
        return
    unknown = [name for name in dict.fromkeys(request.query_params.keys()) if name not in accepted]
    if unknown:
        raise InvalidOption(unknown_query_message(route.path, unknown, accepted))


#: for ``FastAPI(dependencies=[STRICT_QUERY])``
STRICT_QUERY = Depends(reject_unknown_query)
