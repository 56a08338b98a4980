"""A real uvicorn server on a free loopback port, running the app in a background thread."""

from __future__ import annotations

import threading
import time

import uvicorn

from loraplex.platform.app import create_app
from loraplex.platform.settings import Settings
from loraplex.platform.state import AppState

START_TIMEOUT_SECONDS = 180


class RunningServer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = create_app(settings)
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=0, log_level="warning", timeout_graceful_shutdown=5
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="uvicorn", daemon=True)

    def start(self) -> RunningServer:
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the server stopped during start-up (see the log above)")
            if time.monotonic() > deadline:
                raise TimeoutError("the server did not start in time")
            time.sleep(0.05)
        return self

    @property
    def url(self) -> str:
        host, port = self._server.servers[0].sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    @property
    def state(self) -> AppState:
        return self.app.state.loraplex

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)
