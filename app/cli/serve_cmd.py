"""`gpt2-serve serve`: run the HTTP/WebSocket server with uvicorn.

Every setting of :mod:`app.server.settings` is a flag here, generated from the settings object
(:mod:`app.cli.settings_flags`) so that flags and ``GPT2_*`` variables cannot drift; flags win
over the environment.
"""

from __future__ import annotations

import argparse
import signal

from app.cli.settings_flags import add_settings_flags, settings_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the API server", description=__doc__.splitlines()[0])
    p.add_argument("--log-level", default="info", help="uvicorn and gpt2serve log level")
    add_settings_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from app.engine import xla_cache

    settings = settings_from_args(args)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if settings.xla_cache:  # before TensorFlow's first compile reads its XLA flags
        root = settings.cache_dir if settings.cache_dir is not None else settings.models_dir / ".gpt2-serve"
        xla_cache.enable(xla_cache.folder(root))

    from app.server.app import create_app
    from app.server.shutdown import GracefulServer

    # On SIGTERM the server drains first (new requests refused, accepted ones finish within
    # drain_timeout: app.server.shutdown), then uvicorn shuts down and the lifespan stops the
    # workers; uvicorn then restores the previous handler and raises the signal again. With this
    # handler in place, a drained SIGTERM ends the process normally (exit 0) rather than by the signal.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=args.log_level,
        access_log=False,  # app.server.middleware logs each request once, with its id and duration
        timeout_graceful_shutdown=settings.drain_timeout + 5,
    )
    server = GracefulServer(config, app)
    server.run()
    if not server.started:
        return 3  # could not start (e.g. the port is taken); uvicorn logged why
    return 0
