#!/usr/bin/env python3
"""Ollama-API-compatible stand-in for the test bed's Ollama nodes.

Why a stand-in: Ollama itself cannot be installed on these machines (its installer and its models
download from hosts that are not reachable offline). This server speaks the *real* Ollama HTTP API,
with the request and response shapes of Ollama's docs (docs/api.md) and of what LiteLLM's
``ollama/`` and ``ollama_chat/`` providers send and parse, so a gateway routes to it exactly as it
would to Ollama. It runs no model: every reply is deterministic text that names the model.

Endpoints:
    GET  /                 "Ollama is running"
    GET  /api/version      {"version": ...}
    GET  /api/tags         the configured models
    GET  /api/ps           the "loaded" models (same list)
    POST /api/show         model details ({"model": name} or {"name": name})
    POST /api/chat         non-streaming JSON, or streaming NDJSON (Ollama's default: stream=true)
    POST /api/generate     idem, with "response" instead of "message"
    POST /api/embed        {"embeddings": [[...]]};  POST /api/embeddings  {"embedding": [...]}
An unknown model answers 404 {"error": "model 'x' not found"}, as Ollama does.

Configuration (read on every request, so editing the file needs no restart):
    OLLAMA_STANDIN_MODELS   comma-separated model names (wins over the file)
    OLLAMA_STANDIN_MODELS_FILE   JSON: ["m1", "m2:7b"] or {"models": [{"name": ...}, ...]}
                            (default /etc/ollama-standin/models.json)
    OLLAMA_HOST             bind address, host:port (default 127.0.0.1:11434, as Ollama)
A name without a tag means ":latest", as in Ollama ("m1" and "m1:latest" are the same model).

Stdlib only:  python3 ollama_standin.py [--host 0.0.0.0] [--port 11434] [--models m1,m2]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = "0.12.6"
DEFAULT_MODELS_FILE = "/etc/ollama-standin/models.json"
DEFAULT_MODELS = ["llama3.2:1b"]

_cli_models: list[str] | None = None


def _norm(name: str) -> str:
    name = name.strip()
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def configured_models() -> list[str]:
    env = os.environ.get("OLLAMA_STANDIN_MODELS")
    if _cli_models is not None:
        names = _cli_models
    elif env:
        names = [m for m in env.split(",") if m.strip()]
    else:
        path = os.environ.get("OLLAMA_STANDIN_MODELS_FILE", DEFAULT_MODELS_FILE)
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            data = DEFAULT_MODELS
        if isinstance(data, dict):
            data = data.get("models", [])
        names = [m["name"] if isinstance(m, dict) else str(m) for m in data]
    out: list[str] = []
    for n in names:
        n = _norm(n)
        if n not in out:
            out.append(n)
    return out


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def _details(name: str) -> dict:
    family = name.split(":")[0].split("/")[-1].rstrip("0123456789.") or "llama"
    return {
        "parent_model": "",
        "format": "gguf",
        "family": family,
        "families": [family],
        "parameter_size": "1.0B",
        "quantization_level": "Q4_K_M",
    }


def _tag_entry(name: str) -> dict:
    return {
        "name": name,
        "model": name,
        "modified_at": "2025-01-01T00:00:00Z",
        "size": 1_000_000_000 + int(_digest(name)[:6], 16),
        "digest": _digest(name),
        "details": _details(name),
    }


def _words(text: str) -> int:
    return max(1, len(text.split()))


def _text_of(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # tolerate OpenAI-style content parts
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def reply_text(model: str, prompt: str) -> str:
    """The deterministic reply: names the model and echoes (the start of) the prompt."""
    prompt = " ".join(prompt.split())
    if len(prompt) > 200:
        prompt = prompt[:200] + "..."
    return f"Hello from {model} (Ollama API stand-in). You said: {prompt}"


def _pieces(text: str) -> list[str]:
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


class Server(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's listen backlog is 5: 32 clients connecting at once (the benchmarks' load) had
    # some connections reset before the server accepted them.
    request_queue_size = 128


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: with Nagle's algorithm on, a keep-alive client's delayed
    # ACK held every reply ~40 ms, which made the stand-in the slowest part of any load on the bed.
    disable_nagle_algorithm = True
    server_version = "ollama-standin"
    sys_version = ""

    def log_message(self, fmt, *args):  # journald gets one short line per request
        sys.stderr.write("%s %s\n" % (self.address_string(), fmt % args))

    # -- plumbing ------------------------------------------------------------------------------
    def _send(self, status: int, body, content_type: str = "application/json; charset=utf-8") -> None:
        data = body if isinstance(body, bytes) else (json.dumps(body, separators=(",", ":")) if not isinstance(body, str) else body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _error(self, status: int, msg: str) -> None:
        self._send(status, {"error": msg})

    def _body(self) -> dict | None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not raw.strip():
            return {}
        try:
            data = json.loads(raw)
        except ValueError as e:
            self._error(400, f"invalid JSON: {e}")
            return None
        if not isinstance(data, dict):
            self._error(400, "request body must be a JSON object")
            return None
        return data

    def _model(self, body: dict) -> str | None:
        name = body.get("model") or body.get("name")
        if not name or not isinstance(name, str):
            self._error(400, "model is required")
            return None
        if _norm(name) not in configured_models():
            self._error(404, f"model '{name}' not found")
            return None
        return name  # Ollama answers with the name as it was asked for

    def _stream(self, objects) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for obj in objects:
            line = (json.dumps(obj, separators=(",", ":")) + "\n").encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    @staticmethod
    def _timings(prompt_tokens: int, eval_tokens: int) -> dict:
        return {
            "total_duration": 1_000_000 * (prompt_tokens + eval_tokens),
            "load_duration": 1_000_000,
            "prompt_eval_count": prompt_tokens,
            "prompt_eval_duration": 500_000 * prompt_tokens,
            "eval_count": eval_tokens,
            "eval_duration": 500_000 * eval_tokens,
        }

    # -- routes --------------------------------------------------------------------------------
    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        if path == "/":
            self._send(200, "Ollama is running", "text/plain; charset=utf-8")
        elif path == "/api/version":
            self._send(200, {"version": VERSION})
        elif path == "/api/tags":
            self._send(200, {"models": [_tag_entry(m) for m in configured_models()]})
        elif path == "/api/ps":
            self._send(200, {"models": [{**_tag_entry(m), "expires_at": "2099-01-01T00:00:00Z", "size_vram": 0}
                                        for m in configured_models()]})
        else:
            self._send(404, "404 page not found", "text/plain; charset=utf-8")

    def do_POST(self):
        path = self.path.split("?", 1)[0].rstrip("/")
        route = {
            "/api/chat": self._chat,
            "/api/generate": self._generate,
            "/api/show": self._show,
            "/api/embed": self._embed,
            "/api/embeddings": self._embeddings,
        }.get(path)
        if route is None:
            body = self._body()  # drain, keep the connection usable
            self._send(404, "404 page not found", "text/plain; charset=utf-8")
            return
        body = self._body()
        if body is None:
            return
        route(body)

    def _content(self, model: str, prompt: str, body: dict) -> str:
        text = reply_text(model, prompt)
        fmt = body.get("format")
        if fmt:  # "json" or a JSON schema: answer valid JSON, as Ollama's structured outputs do
            return json.dumps({"model": model, "reply": text})
        return text

    def _chat(self, body: dict) -> None:
        model = self._model(body)
        if model is None:
            return
        messages = body.get("messages") or []
        if not isinstance(messages, list):
            return self._error(400, "messages must be a list")
        last_user = next((_text_of(m.get("content")) for m in reversed(messages)
                          if isinstance(m, dict) and m.get("role") == "user"), "")
        prompt_tokens = sum(_words(_text_of(m.get("content"))) for m in messages if isinstance(m, dict)) or 1
        if not messages:  # Ollama: an empty chat only loads the model
            return self._send(200, {"model": model, "created_at": _now(),
                                    "message": {"role": "assistant", "content": ""},
                                    "done_reason": "load", "done": True})
        text = self._content(model, last_user, body)
        timings = self._timings(prompt_tokens, _words(text))
        if body.get("stream", True) is False:
            return self._send(200, {"model": model, "created_at": _now(),
                                    "message": {"role": "assistant", "content": text},
                                    "done_reason": "stop", "done": True, **timings})
        chunks = [{"model": model, "created_at": _now(), "message": {"role": "assistant", "content": p},
                   "done": False} for p in _pieces(text)]
        chunks.append({"model": model, "created_at": _now(), "message": {"role": "assistant", "content": ""},
                       "done_reason": "stop", "done": True, **timings})
        self._stream(chunks)

    def _generate(self, body: dict) -> None:
        model = self._model(body)
        if model is None:
            return
        prompt = _text_of(body.get("prompt") or "")
        if not prompt:  # Ollama: an empty prompt only loads the model
            return self._send(200, {"model": model, "created_at": _now(), "response": "",
                                    "done": True, "done_reason": "load"})
        text = self._content(model, prompt, body)
        timings = self._timings(_words(prompt), _words(text))
        context = [int(_digest(w)[:4], 16) for w in text.split()][:64]
        if body.get("stream", True) is False:
            return self._send(200, {"model": model, "created_at": _now(), "response": text, "done": True,
                                    "done_reason": "stop", "context": context, **timings})
        chunks = [{"model": model, "created_at": _now(), "response": p, "done": False} for p in _pieces(text)]
        chunks.append({"model": model, "created_at": _now(), "response": "", "done": True, "done_reason": "stop",
                       "context": context, **timings})
        self._stream(chunks)

    def _show(self, body: dict) -> None:
        model = self._model(body)
        if model is None:
            return
        details = _details(model)
        self._send(200, {
            "license": "",
            "modelfile": f"# Modelfile generated by the Ollama API stand-in\nFROM {model}\n",
            "parameters": "stop \"<|eot_id|>\"",
            "template": "{{- if .Tools }}tools{{ end }}{{ .Prompt }}",
            "details": details,
            "model_info": {"general.architecture": details["family"], "general.parameter_count": 1_000_000_000,
                           f"{details['family']}.context_length": 8192},
            "capabilities": ["completion", "tools"],
            "modified_at": "2025-01-01T00:00:00Z",
        })

    @staticmethod
    def _vector(model: str, text: str, dims: int = 16) -> list[float]:
        h = hashlib.sha256(f"{model}\0{text}".encode()).digest()
        return [round((b - 127.5) / 127.5, 6) for b in h[:dims]]

    def _embed(self, body: dict) -> None:
        model = self._model(body)
        if model is None:
            return
        inp = body.get("input", "")
        inputs = inp if isinstance(inp, list) else [inp]
        self._send(200, {"model": model, "embeddings": [self._vector(model, str(i)) for i in inputs],
                         "total_duration": 1_000_000, "load_duration": 1_000_000,
                         "prompt_eval_count": sum(_words(str(i)) for i in inputs)})

    def _embeddings(self, body: dict) -> None:
        model = self._model(body)
        if model is None:
            return
        self._send(200, {"embedding": self._vector(model, str(body.get("prompt", "")))})


def main(argv: list[str] | None = None) -> int:
    global _cli_models
    host_env = os.environ.get("OLLAMA_HOST", "127.0.0.1:11434").replace("http://", "")
    env_host, _, env_port = host_env.rpartition(":")
    p = argparse.ArgumentParser(description="Ollama-API-compatible stand-in (see module docstring).")
    p.add_argument("--host", default=env_host or "127.0.0.1")
    p.add_argument("--port", type=int, default=int(env_port or 11434))
    p.add_argument("--models", help="comma-separated model names (overrides the models file)")
    a = p.parse_args(argv)
    if a.models:
        _cli_models = [m for m in a.models.split(",") if m.strip()]
    server = Server((a.host, a.port), Handler)
    print(f"ollama stand-in {VERSION} listening on {a.host}:{a.port}, models: {configured_models()}",
          file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
