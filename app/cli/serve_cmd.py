"""`gpt2-serve serve`: run the HTTP/WebSocket server with uvicorn.

Every flag mirrors a ``GPT2_*`` setting (see :mod:`app.server.settings`); flags win over the
environment.
"""

from __future__ import annotations

import argparse
import signal

FLAGS = {  # flag -> (settings field, help)
    "--models": ("models", "comma-separated model names or folders (GPT2_MODELS)"),
    "--models-dir": ("models_dir", "folder of model folders (GPT2_MODELS_DIR)"),
    "--placement": ("placement", "model=DEVICE pairs, e.g. 124M=GPU:0,355M=GPU:1 (GPT2_PLACEMENT)"),
    "--dtype": ("dtype", "float32 | float16 | bfloat16 (GPT2_DTYPE)"),
    "--cpu-devices": ("cpu_devices", "split the CPU into N logical devices (GPT2_CPU_DEVICES)"),
    "--slots": ("slots", "concurrent sequences per model (GPT2_SLOTS; default: sized from memory)"),
    "--queue-size": ("queue_size", "requests waiting per model (GPT2_QUEUE_SIZE)"),
    "--host": ("host", "GPT2_HOST"),
    "--port": ("port", "GPT2_PORT"),
    "--cors-origins": ("cors_origins", "comma-separated allowed origins (GPT2_CORS_ORIGINS)"),
    "--api-keys": ("api_keys", "comma-separated bearer keys (GPT2_API_KEYS)"),
    "--default-max-new-tokens": ("default_max_new_tokens", "GPT2_DEFAULT_MAX_NEW_TOKENS"),
    "--max-new-tokens-limit": ("max_new_tokens_limit", "GPT2_MAX_NEW_TOKENS_LIMIT"),
    "--drain-timeout": ("drain_timeout", "seconds to finish in-flight requests on SIGTERM (GPT2_DRAIN_TIMEOUT)"),
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the API server", description=__doc__)
    for flag, (_, help_text) in FLAGS.items():
        p.add_argument(flag, default=None, help=help_text)
    p.add_argument("--no-warmup", action="store_true", help="do not compile common shapes before ready")
    p.add_argument("--log-level", default="info")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging

    import uvicorn
    from pydantic import ValidationError

    from app.server.app import create_app
    from app.server.settings import Settings
    from app.server.shutdown import GracefulServer

    overrides = {field: getattr(args, flag[2:].replace("-", "_")) for flag, (field, _) in FLAGS.items()}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if args.no_warmup:
        overrides["warmup"] = False
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ValueError(f"setting {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    # On SIGTERM the server drains first (new requests refused, accepted ones finish within
    # drain_timeout: app.server.shutdown), then uvicorn shuts down and the lifespan stops the
    # workers; uvicorn then restores the previous handler and raises the signal again. With this
    # handler in place, a drained SIGTERM ends the process normally (exit 0) rather than by the signal.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=args.log_level,
                            timeout_graceful_shutdown=settings.drain_timeout + 5)  # fmt: skip
    server = GracefulServer(config, app)
    server.run()
    if not server.started:
        return 3  # could not start (e.g. the port is taken); uvicorn logged why
    return 0
