"""The proxy's ASGI application: routes, the optional bearer token, and each API's own error shape."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from proxy import ollama_api, openai_api
from proxy.tasks import ClientGone, ProxyError
from router import Router

log = logging.getLogger(__name__)

Endpoint = Callable[[Router, Request], Awaitable[Response]]
ErrorShape = Callable[[ProxyError], Response]
CLIENT_CLOSED = 499  # nginx's "client closed request": logged only, nobody reads it


def build_app(router: Router, *, token: str | None = None) -> Starlette:
    """The proxy for ``router``; with ``token``, every request must carry ``Authorization: Bearer <token>``."""

    def route(path: str, endpoint: Endpoint, method: str, errors: ErrorShape) -> Route:
        async def handle(request: Request) -> Response:
            try:
                if token is not None and not _authorised(request, token):
                    raise ProxyError(401, "missing or wrong bearer token (COSTLINE_PROXY_TOKEN)", kind="unauthorized")
                return await endpoint(router, request)
            except ProxyError as error:
                return errors(error)
            except ClientGone as gone:
                log.info("client went away: task %s cancelled, its attempts booked", gone)
                return Response(status_code=CLIENT_CLOSED)

        return Route(path, handle, methods=[method])

    routes = [
        route("/api/chat", ollama_api.chat, "POST", ollama_api.error_response),
        route("/api/generate", ollama_api.generate, "POST", ollama_api.error_response),
        route("/api/tags", ollama_api.tags, "GET", ollama_api.error_response),
        route("/api/version", ollama_api.version, "GET", ollama_api.error_response),
        route("/v1/chat/completions", openai_api.chat_completions, "POST", openai_api.error_response),
        route("/v1/models", openai_api.models, "GET", openai_api.error_response),
    ]
    return Starlette(routes=routes)


def _authorised(request: Request, token: str) -> bool:
    scheme, _, offered = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(offered.strip().encode(), token.encode())
