"""A real headless Chromium for the tests, driven over the DevTools protocol through a pipe
(``--remote-debugging-pipe``: JSON messages ended by NUL on file descriptors 3 and 4), so no
extra Python package is needed. It opens a page, collects console errors and uncaught
exceptions, evaluates JavaScript and takes screenshots."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

from system_packages import ensure_installed

EXECUTABLES = ("chromium", "chromium-browser", "google-chrome")


class Browser:
    def __init__(self, profile_dir: Path):
        if self._executable() is None:
            ensure_installed(["chromium"], ["chromium"])
        executable = self._executable()
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def wire_pipes() -> None:  # in the child: the protocol's fds 3 (commands) and 4 (replies)
            # moved above 4 first, so neither end is overwritten by the other's dup2
            commands = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)
            replies = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
            os.dup2(commands, 3)  # dup2 to another number makes the copy inheritable across exec
            os.dup2(replies, 4)

        self.proc = subprocess.Popen(
            [executable, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--remote-debugging-pipe", f"--user-data-dir={profile_dir}", "--window-size=1400,1000", "about:blank"],
            preexec_fn=wire_pipes, close_fds=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._next_id = 0
        self._replies: dict[int, dict] = {}
        self.events: list[dict] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable", session=self.session)

    @staticmethod
    def _executable() -> str | None:
        return next((shutil.which(e) for e in EXECUTABLES if shutil.which(e)), None)

    def _read(self) -> None:
        buffer = b""
        while chunk := os.read(self._from_browser, 1 << 20):
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            with self._changed:
                for raw in messages:
                    message = json.loads(raw)
                    if "id" in message:
                        self._replies[message["id"]] = message
                    else:
                        self.events.append(message)
                self._changed.notify_all()

    def call(self, method: str, session: str | None = None, timeout: float = 60, **params) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        with self._changed:
            if not self._changed.wait_for(lambda: self._next_id in self._replies, timeout):
                raise TimeoutError(f"Chromium did not answer {method} in {timeout} s")
            reply = self._replies.pop(self._next_id)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def open(self, path: Path, timeout: float = 60) -> None:
        """Load a local page and wait for its load event."""
        seen = len(self.events)
        self.call("Page.navigate", session=self.session, url=path.resolve().as_uri())
        deadline = time.monotonic() + timeout
        with self._changed:
            while not any(e.get("method") == "Page.loadEventFired" for e in self.events[seen:]):
                if not self._changed.wait(max(0.0, deadline - time.monotonic())):
                    raise TimeoutError(f"{path} did not finish loading in {timeout} s")

    def evaluate(self, expression: str):
        """The value of a JavaScript expression (awaited when it is a promise)."""
        result = self.call("Runtime.evaluate", session=self.session, expression=expression, awaitPromise=True,
                           returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"JavaScript failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not self.evaluate(expression):
            if time.monotonic() > deadline:
                raise TimeoutError(f"still false after {timeout} s: {expression}")
            time.sleep(0.1)

    def images(self, selector: str = "img") -> list[dict]:
        """Every image matched by ``selector``: loaded (``complete``), its natural size, and
        whether its last pixel row is opaque. A truncated PNG still "loads" in Chromium,
        drawn only partly: the rows it lacks stay transparent (the report's PNGs have an
        opaque background)."""
        return self.evaluate(f"""[...document.querySelectorAll({selector!r})].map(img => {{
            const canvas = document.createElement('canvas');
            canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
            let opaque = false;
            if (img.complete && img.naturalWidth > 0) {{
                const ctx = canvas.getContext('2d');
                ctx.drawImage(img, 0, 0);
                const row = ctx.getImageData(0, img.naturalHeight - 1, img.naturalWidth, 1).data;
                opaque = row.every((value, i) => i % 4 !== 3 || value === 255);
            }}
            return {{alt: img.alt, complete: img.complete, width: img.naturalWidth, height: img.naturalHeight,
                     opaque_bottom: opaque}};
        }})""")

    def errors(self, since: int = 0) -> list[str]:
        """Console errors, uncaught exceptions and browser log errors (of the events from
        index ``since`` on)."""
        found = []
        for event in self.events[since:]:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                found.append(f"exception: {params['exceptionDetails'].get('exception', {}).get('description')}")
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                found.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                found.append(f"log: {params['entry']['text']} ({params['entry'].get('url', '')})")
        return found

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", session=self.session, format="png")["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except (OSError, RuntimeError, TimeoutError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
