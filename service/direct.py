"""The upload routes' short way in: ``POST /v1/tag``, ``/v1/embed`` and ``/v1/detect`` go
straight to their endpoint functions, past FastAPI's router and dependency resolution.

Those cost about 0.4 ms of a front's event loop per request (a dozen included routers
matched in turn, ``solve_dependencies``, the exception and exit-stack middlewares), a
sixth of what a lone 10 s upload spends in the service. The routes stay declared with
FastAPI, which still serves every other method and path and writes the OpenAPI document
from them; this door runs the same three steps FastAPI would (the API key, the route's
query model, the endpoint) and answers errors with the same handlers (``service.errors``).
An exception without a handler there goes on up, to the 500 handler, as it would.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

# as Starlette keeps them (``app.exception_handlers``); the service's are all ``async``
Handler = Callable[[Request, Exception], Response | Awaitable[Response]]


@dataclass(frozen=True)
class DirectRoute:
    """One upload route: its path, its query parser (the FastAPI dependency the route
    declares) and its endpoint, called as FastAPI calls it: ``endpoint(request, query)``."""

    path: str
    query: Callable[[Request], Awaitable[Any]]
    endpoint: Callable[[Request, Any], Awaitable[Response]]


def declared(route: DirectRoute, routes: list[Any]) -> APIRoute:
    """The FastAPI route ``route`` short-cuts (the access log and metrics name it)."""
    for candidate in routes:
        if (
            isinstance(candidate, APIRoute)
            and candidate.path == route.path
            and candidate.endpoint is route.endpoint
            and "POST" in (candidate.methods or ())
        ):
            return candidate
    raise LookupError(f"no POST route {route.path} with endpoint {route.endpoint.__name__}")


class DirectUploads:
    """ASGI middleware: a ``POST`` to one of ``routes`` runs ``auth``, the route's query
    parser and its endpoint here; every other request goes on to ``app`` (FastAPI)."""

    def __init__(
        self,
        app: ASGIApp,
        routes: Mapping[str, tuple[DirectRoute, APIRoute]],
        auth: Callable[[Request], Awaitable[None]],
        handlers: Mapping[Any, Handler],
    ) -> None:
        self.app, self.routes, self.auth, self.handlers = app, routes, auth, handlers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = self._match(scope)
        if found is None:
            await self.app(scope, receive, send)
            return
        route, declared_as = found
        scope["route"] = declared_as
        scope["endpoint"] = route.endpoint
        request = Request(scope, receive, send)
        try:
            await self.auth(request)
            response = await route.endpoint(request, await route.query(request))
        except Exception as exc:
            handler = self._handler(exc)
            if handler is None:
                raise
            answer = handler(request, exc)
            response = await answer if inspect.isawaitable(answer) else answer
        await response(scope, receive, send)

    def _match(self, scope: Scope) -> tuple[DirectRoute, APIRoute] | None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return None
        path: str = scope["path"]
        root: str = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        return self.routes.get(path)

    def _handler(self, exc: Exception) -> Handler | None:
        """The handler Starlette's exception middleware would pick (the first class in the
        exception's MRO that has one), short of the catch-all ``Exception``'s, which runs
        outermost, after the access log saw the exception."""
        for cls in type(exc).__mro__:
            if cls is Exception:
                return None
            if cls in self.handlers:
                return self.handlers[cls]
        return None
