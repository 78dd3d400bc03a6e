"""Run a test stand-in server (anything with ``handler()`` and an ``httpd`` slot) on 127.0.0.1."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import ThreadingHTTPServer
from typing import TypeVar

T = TypeVar("T")


@contextmanager
def running(fake: T, before_stop: Callable[[], None] | None = None, port: int = 0) -> Iterator[T]:
    """Serve ``fake.handler()`` on ``port`` (0: one the OS picks), in a daemon thread, for the block's duration."""
    ThreadingHTTPServer.allow_reuse_address = True  # a server restarted on the port it had (a rerun's URL)
    fake.httpd = ThreadingHTTPServer(("127.0.0.1", port), fake.handler())
    fake.httpd.daemon_threads = True
    thread = threading.Thread(target=fake.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        if before_stop:
            before_stop()
        fake.httpd.shutdown()
        fake.httpd.server_close()
        thread.join(timeout=5)
