"""A grading judge on loopback for end-to-end tests: an OpenAI-compatible chat completions server.

It rates an answer [[9]] when it equals the reference (case and spaces aside) and [[2]] otherwise,
by reading the two back out of bakeoff's judge prompt.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_PAIR = re.compile(r"Reference answer:\n(.*?)\n\nAssistant's answer:\n(.*?)\n\n", re.S)


class GradingJudge:
    def __init__(self):
        self.requests = 0
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with owner._lock:
                    owner.requests += 1
                match = _PAIR.search(body["messages"][-1]["content"])
                same = bool(match) and match.group(1).strip().lower() == match.group(2).strip().lower()
                text = "Matches the reference. Rating: [[9]]" if same else "Does not match. Rating: [[2]]"
                payload = json.dumps({
                    "id": "cmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": 50, "completion_tokens": 8, "total_tokens": 58},
                }).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> GradingJudge:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
