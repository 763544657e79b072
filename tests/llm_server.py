"""A real HTTP server on 127.0.0.1 that speaks OpenAI chat completions with scripted answers, for tests and the
synthesis benchmark. It serves from a daemon thread and stops with its context manager (or the process)."""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# A responder gets (request body, how many times this prompt was seen before) and returns one of:
#   ("ok", content)  ("status", code)  ("sleep", seconds, content)  ("drop",)
Responder = Callable[[dict, int], tuple]


def messages_hash(messages) -> str:
    """Hash of [[role, content], ...]: the same for a request body and for a stored `messages` column."""
    pairs = [[m["role"], m["content"]] if isinstance(m, dict) else list(m) for m in messages]
    return hashlib.md5(json.dumps(pairs).encode()).hexdigest()


SENTENCES = {
    "English": "The weather is nice today and the sun is warm.",
    "French": "Le temps est beau aujourd'hui et le soleil est chaud.",
    "German": "Das Wetter ist heute schön und die Sonne ist warm.",
    "Spanish": "El tiempo es bueno hoy y el sol es cálido.",
    "Chinese": "今天天气很好，阳光很温暖。",
    "Japanese": "今日はいい天気で、太陽が暖かいです。",
    "Russian": "Сегодня хорошая погода и солнце тёплое.",
    "Arabic": "الطقس جميل اليوم والشمس دافئة.",
    "Korean": "오늘은 날씨가 좋고 햇볕이 따뜻합니다.",
}


def good_answer(body: dict) -> str:
    """A valid answer for any of our prompts, derived from the prompt so it is deterministic."""
    prompt = body["messages"][-1]["content"]
    tag = hashlib.md5(prompt.encode()).hexdigest()[:8]
    if "Brainstorm" in prompt:
        persona = body["messages"][0]["content"]
        return json.dumps([f"Retrieve documents about {w} for {persona[8:40]} ({tag})" for w in
                           ("tides", "bread", "trains", "contracts")])
    if '"S3"' in prompt:
        return json.dumps({"S1": f"The cat sat on the mat {tag}.", "S2": f"A cat was sitting on the mat {tag}.",
                           "S3": f"The dog slept by the door {tag}."})
    if '"S1" and "S2"' in prompt:
        m = re.search(r"one \w+(?: \w+)? in (\w+) and its translation into (\w+)", prompt)
        src, tgt = m.groups() if m else ("English", "French")
        return json.dumps({"S1": f"{SENTENCES[src]} ({tag})", "S2": f"{SENTENCES[tgt]} ({tag})"})
    return json.dumps({"user_query": f"how do tides work {tag}",
                       "positive_document": f"Tides are caused by the moon's gravity pulling on the oceans {tag}.",
                       "hard_negative_document": f"The moon has no atmosphere and many craters {tag}."})


class ScriptedLLM:
    def __init__(self, responder: Responder | None = None, latency: float = 0.0):
        self.responder = responder or (lambda body, seen: ("ok", good_answer(body)))
        self.latency = latency
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.seen: dict[str, int] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def setup(self):
                super().setup()
                # headers and body go out in two writes; without this, Nagle + delayed ACK add ~40 ms per answer
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                h = messages_hash(body["messages"])
                with server.lock:
                    attempt = server.seen.get(h, 0)
                    server.seen[h] = attempt + 1
                    server.requests.append({"hash": h, "auth": self.headers.get("Authorization"), "body": body})
                if server.latency:
                    time.sleep(server.latency)
                action = server.responder(body, attempt)
                if action[0] == "drop":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if action[0] == "status":
                    return self._send(action[1], {"error": {"message": "scripted failure", "type": "server_error"}})
                if action[0] == "sleep":
                    time.sleep(action[1])
                content = action[-1]
                self._send(200, {"id": "cmpl-" + h[:8], "object": "chat.completion", "created": int(time.time()),
                                 "model": body["model"],
                                 "choices": [{"index": 0, "finish_reason": "stop",
                                              "message": {"role": "assistant", "content": content}}],
                                 "usage": {"prompt_tokens": len(json.dumps(body["messages"])) // 4,
                                           "completion_tokens": len(content) // 4,
                                           "total_tokens": len(json.dumps(body["messages"])) // 4 + len(content) // 4}})

            def _send(self, code: int, payload: dict):
                data = json.dumps(payload).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
                    pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 256  # the default backlog of 5 drops SYNs when 32 clients connect at once

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> "ScriptedLLM":
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
