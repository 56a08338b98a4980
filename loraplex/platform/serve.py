"""`loraplex serve`: prepare the embedded deployment, print where it answers, serve with uvicorn.

With no configuration at all it runs a tiny Llama made locally, SQLite and a local object store
under `./data`, on the GPU when there is one. Options on the command line win over `LORAPLEX_*`
environment variables, which win over the defaults.
"""

from __future__ import annotations

import argparse

OPTION_FIELDS = ("host", "port", "model", "served_model_name", "data_dir", "device", "dtype",
                 "max_model_len")  # fmt: skip


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default 8000; 0 picks a free one)")
    parser.add_argument("--model", help="Hugging Face model folder (default: a tiny made one)")
    parser.add_argument("--served-model-name", help="the base model's name in requests")
    parser.add_argument("--data-dir", help="folder for the database, objects and caches")
    parser.add_argument("--device", help="auto, cpu or cuda")
    parser.add_argument("--dtype", help="auto, float32, float16 or bfloat16")
    parser.add_argument("--max-model-len", type=int, help="context length")
    parser.add_argument("--log-level", default="info", help="uvicorn's log level")


def banner(url: str, admin_key: str | None, model: str) -> str:
    lines = [
        "",
        f"loraplex is serving {model}",
        f"  API:        {url}/v1",
        f"  API docs:   {url}/docs",
        f"  dashboard:  {url}/dashboard",
        f"  metrics:    {url}/metrics",
    ]
    if admin_key is not None:
        lines += [
            "",
            "  admin key (shown once, keep it):",
            f"    {admin_key}",
        ]
    return "\n".join(lines) + "\n"


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from loraplex.platform.app import create_app
    from loraplex.platform.bootstrap import prepare_service
    from loraplex.platform.settings import Settings

    overrides = {
        field: getattr(args, field) for field in OPTION_FIELDS if getattr(args, field) is not None
    }
    settings = Settings(**overrides)
    admin_key = prepare_service(settings)
    app = create_app(settings)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=args.log_level)

    class AnnouncingServer(uvicorn.Server):
        async def startup(self, sockets=None) -> None:
            await super().startup(sockets=sockets)
            if self.started:  # listening now: the port is known even when 0 was asked for
                host, port = self.servers[0].sockets[0].getsockname()[:2]
                shown_host = f"[{host}]" if ":" in host else host
                model = app.state.loraplex.served_model_name
                print(banner(f"http://{shown_host}:{port}", admin_key, model), flush=True)

    AnnouncingServer(config).run()
    return 0
