"""`costline proxy`: serve the Ollama and OpenAI APIs in front of the router."""

from __future__ import annotations

import signal
from typing import Annotated

import typer

from costline.cli.app import ConfigOption, app, console, fail, load_or_exit
from costline.config import ConfigError
from costline.net import is_loopback

EXIT_TERMINATED = 143  # SIGTERM, as shells report it


@app.command()
def proxy(
    host: Annotated[str | None, typer.Option("--host", help="Address to listen on (default: proxy.host).")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Port to listen on (default: proxy.port).")] = None,
    config: ConfigOption = None,
) -> None:
    """Serve the Ollama API (/api/chat, /api/generate) and the OpenAI API (/v1/chat/completions) in front of the
    router: every request is one routed task, accounted like `costline route`."""
    import uvicorn

    from proxy import build_app
    from router import Router

    cfg = load_or_exit(config)
    bind_host, bind_port = host or cfg.proxy.host, cfg.proxy.port if port is None else port
    token = cfg.proxy_token
    if token is None and not is_loopback(bind_host) and not cfg.proxy.allow_unauthenticated:
        fail(
            f"refusing to serve on {bind_host} without a token: set COSTLINE_PROXY_TOKEN, or "
            "proxy.allow_unauthenticated = true if the network is trusted",
            code=2,
        )
    try:
        router = Router(cfg)
    except ConfigError as exc:
        fail(str(exc), code=2)
    with router:
        console.print(
            f"costline proxy on http://{bind_host}:{bind_port} — Ollama API at /api, OpenAI API at /v1; models: auto, "
            f"claude, {', '.join(cfg.router.models)}",
            highlight=False,
        )
        # uvicorn stops gracefully on SIGTERM, then raises the signal again; its default action would end the process
        # before the router flushes the spans of the last half second (still in the batch processor, not yet in
        # the spool). As an exception, it leaves through `with router`, which flushes them.
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
        uvicorn.run(
            build_app(router, token=token),
            host=bind_host,
            port=bind_port,
            log_level="warning",
            access_log=False,  # a line per request; the spans are the record
        )


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(EXIT_TERMINATED)
