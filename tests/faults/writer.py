"""A bounded writer for the fault tier: virtual keys and chat requests through a DB-backed gateway,
recording every write the proxy acknowledged (answered 200) and when.

It only ever talks to the gateway URL it is given (a test-bed address), and it stops by itself after
`max_writes` writes or `max_seconds`, whichever comes first, or when stop() is called.
"""

from __future__ import annotations

import http.client
import threading
import time
from dataclasses import dataclass, field

from tests.e2e import gateway_http as api

PACE = 0.2  # at most one write per PACE seconds: the fault, not the writer, is what the gateway is under


@dataclass
class Ack:
    value: str  # the virtual key, or the chat completion's id (LiteLLM's spend-log request_id)
    at: float  # time.time() when the 200 arrived


@dataclass
class Writer:
    base_url: str
    master_key: str
    model: str
    max_writes: int = 3000
    max_seconds: float = 120
    keys: list[Ack] = field(default_factory=list)
    chats: list[Ack] = field(default_factory=list)
    failures: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> "Writer":
        self._thread = threading.Thread(target=self._run, name="fault-writer", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> "Writer":
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=api.TIMEOUT + 10)
            assert not self._thread.is_alive(), "the writer did not stop"
        return self

    def wait_for_acks(self, count: int, timeout: float) -> None:
        """Until `count` more writes have been acknowledged (keys and chats), within `timeout`."""
        goal, deadline = self.acknowledged + count, time.monotonic() + timeout
        while self.acknowledged < goal:
            assert time.monotonic() < deadline, f"{count} writes not acknowledged within {timeout} s"
            assert self._thread is not None and self._thread.is_alive(), "the writer stopped early"
            self._stop.wait(0.1)

    @property
    def acknowledged(self) -> int:
        return len(self.keys) + len(self.chats)

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        for n in range(self.max_writes):
            if self._stop.is_set() or time.monotonic() > deadline:
                return
            # Keys and chats in turn: every chat uses the newest key, so spend lands on fresh keys too.
            if n % 2 == 0 or not self.keys:
                ack = self._write_key()
                record = self.keys
            else:
                ack = self._write_chat(self.keys[-1].value)
                record = self.chats
            if ack is None:
                self.failures += 1
            else:
                record.append(ack)
            self._stop.wait(PACE)

    def _write_key(self) -> Ack | None:
        return self._acknowledged("/key/generate", self.master_key, {"models": [self.model], "max_budget": 10}, "key")

    def _write_chat(self, key: str) -> Ack | None:
        return self._acknowledged("/chat/completions", key,
                                  {"model": self.model, "messages": [{"role": "user", "content": "hi"}]}, "id")

    def _acknowledged(self, path: str, key: str, body: dict, field: str) -> Ack | None:
        """POST `body`; the answer's `field` when the proxy answered 200 with it, else None."""
        try:
            status, answer = api.request(self.base_url, "POST", path, key=key, body=body)
        except (OSError, http.client.HTTPException):
            return None
        if status == 200 and isinstance(answer, dict) and answer.get(field):
            return Ack(answer[field], time.time())
        return None
