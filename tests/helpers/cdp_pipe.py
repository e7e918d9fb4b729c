"""A minimal Chrome DevTools Protocol client over ``--remote-debugging-pipe`` (no websocket library
needed): headless Chromium reads NUL-terminated JSON commands on fd 3 and writes replies and events on
fd 4. Enough to open a page, set files on an ``<input type=file>``, evaluate script, download and take
screenshots, as a user would in the browser."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import tempfile
import threading
import time


def _high(fd: int) -> int:
    import fcntl

    moved = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return moved


class CDPError(RuntimeError):
    pass


class Chromium:
    """Headless Chromium driven over a pipe; one page (a flattened target session)."""

    def __init__(self, browser: str, width: int = 1280, height: int = 1000):
        self.profile = tempfile.TemporaryDirectory(prefix="chromium-profile-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
                 "--remote-debugging-pipe", f"--user-data-dir={self.profile.name}", f"--window-size={width},{height}"]
        # the child's ends moved above fd 9, then duplicated onto 3 and 4 in the child just before exec
        # (fds Python opens are not inherited; dup2 makes these two inheritable)
        to_browser_r, from_browser_w = (_high(fd) for fd in (to_browser_r, from_browser_w))

        def onto_3_and_4():
            os.dup2(to_browser_r, 3)
            os.dup2(from_browser_w, 4)

        self.process = subprocess.Popen([browser, *flags, "about:blank"], preexec_fn=onto_3_and_4,  # noqa: PLW1509 (dup2 only)
                                        close_fds=False,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._next_id = 0
        self._replies: dict[int, queue.Queue] = {}
        self.events: list[dict] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]

    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                data = os.read(self._from_browser, 1 << 16)
            except OSError:
                return
            if not data:
                return
            buffer += data
            while b"\0" in buffer:
                raw, buffer = buffer.split(b"\0", 1)
                message = json.loads(raw)
                if "id" in message:
                    with self._lock:
                        box = self._replies.get(message["id"])
                    if box is not None:
                        box.put(message)
                else:
                    self.events.append(message)

    def send(self, method: str, params: dict | None = None, session: bool = False, timeout: float = 60) -> dict:
        with self._lock:
            self._next_id += 1
            mid = self._next_id
            box = self._replies[mid] = queue.Queue()
        message = {"id": mid, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        try:
            reply = box.get(timeout=timeout)
        except queue.Empty:
            raise CDPError(f"{method}: no reply in {timeout} s") from None
        if "error" in reply:
            raise CDPError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def page(self, method: str, params: dict | None = None, timeout: float = 60) -> dict:
        return self.send(method, params, session=True, timeout=timeout)

    def evaluate(self, expression: str, timeout: float = 60):
        result = self.page("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True}, timeout=timeout)
        if "exceptionDetails" in result:
            raise CDPError(f"script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 120, every: float = 0.2):
        """Evaluate ``expression`` until it is truthy; return its value."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(every)
        raise CDPError(f"timed out after {timeout} s waiting for {expression}")

    def console_problems(self) -> list[str]:
        """Console errors/warnings and uncaught exceptions the page produced."""
        out = []
        for event in self.events:
            params = event.get("params", {})
            if event.get("method") == "Runtime.exceptionThrown":
                out.append(json.dumps(params.get("exceptionDetails", {}))[:500])
            elif event.get("method") == "Runtime.consoleAPICalled" and params.get("type") in ("error", "warning", "assert"):
                out.append(" ".join(str(a.get("value", a.get("description"))) for a in params.get("args", [])))
            elif event.get("method") == "Log.entryAdded" and params.get("entry", {}).get("level") in ("error", "warning"):
                out.append(f"{params['entry'].get('text', '')} {params['entry'].get('url', '')}".strip())
        return out

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except (CDPError, OSError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
        self.profile.cleanup()
