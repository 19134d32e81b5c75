"""Running the app under waitress, set up for token streams.

* `threads`: each open stream holds one thread for its whole length, so there must be more threads than
  concurrent streams (the app refuses streams past `Limits.max_streams` with 429; keep it below `threads`).
* waitress sends each chunk as soon as it is written (`send_bytes` 1), so server-sent events are not buffered.
* `channel_request_lookahead` 1 lets waitress read the socket while a request runs, so it sees a client that
  went away and the app cancels that client's generation even while no token is being written.
* `asyncore_use_poll` lifts select()'s limit of 1024 sockets.
* waitress refuses bodies far over the app's own limit before buffering them (the app answers 413 as JSON
  up to four times its limit).
"""

from __future__ import annotations

import logging
import threading

from waitress.server import create_server

log = logging.getLogger(__name__)

DEFAULT_THREADS = 32


class _DisconnectDuringErrorFilter(logging.Filter):
    """waitress 3.0.2 logs a traceback of its own when a client leaves while waitress answers a request it could
    not parse (its disconnect message reads `request.path`, which such a request lacks): one line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, AttributeError) and "'HTTPRequestParser' object has no attribute 'path'" in str(error):
            record.msg, record.args, record.exc_info, record.exc_text = (
                "client disconnected while waitress answered a malformed request", (), None, None)
        return True


logging.getLogger("waitress").addFilter(_DisconnectDuringErrorFilter())
CHANNEL_TIMEOUT = 300  # seconds a connection may stay silent (a slow stream still writes at every token)


def make_server(app, host: str = "127.0.0.1", port: int = 8080, threads: int = DEFAULT_THREADS, **adjustments):
    """A waitress server for `app`, bound but not yet running (`.run()` serves, `.close()` stops);
    `.effective_port` is the port bound (useful with port 0)."""
    limit = app.config.get("MAX_CONTENT_LENGTH") if hasattr(app, "config") else None
    settings = dict(threads=threads, channel_timeout=CHANNEL_TIMEOUT, channel_request_lookahead=1,
                    asyncore_use_poll=True, ident="pangu_zoo", connection_limit=max(100, 4 * threads))
    if limit:
        settings["max_request_body_size"] = 4 * limit
    settings.update(adjustments)
    return create_server(app, host=host, port=port, **settings)


def serve(app, host: str = "127.0.0.1", port: int = 8080, threads: int = DEFAULT_THREADS, **adjustments) -> None:
    """Serve `app` until interrupted."""
    server = make_server(app, host, port, threads, **adjustments)
    log.info("serving on http://%s:%d (%d threads)", host, server.effective_port, threads)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()


class BackgroundServer:
    """`make_server` run in a daemon thread: `with BackgroundServer(app) as url:` (tests, notebooks)."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, threads: int = DEFAULT_THREADS,
                 **adjustments) -> None:
        self.server = make_server(app, host, port, threads, **adjustments)
        self.thread = threading.Thread(target=self.server.run, name="waitress", daemon=True)

    @property
    def url(self) -> str:
        host = self.server.effective_host
        return f"http://{host}:{self.server.effective_port}"

    def start(self) -> str:
        self.thread.start()
        return self.url

    def stop(self) -> None:
        self.server.close()
        self.thread.join(5)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
