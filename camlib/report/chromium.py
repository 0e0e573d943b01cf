"""Headless Chromium driven over the DevTools protocol on a pipe (standard library only).

Used by camlib's tests and benchmark to check the report in a real browser:
it opens a page, collects console errors and uncaught exceptions, evaluates
JavaScript and takes screenshots. Nothing is downloaded: it runs the
``chromium`` (or ``google-chrome``) installed on the machine, found by
:func:`find_chromium`; set ``CAMLIB_CHROMIUM`` to choose one.

Example:
    >>> path = find_chromium()  # None where no browser is installed
    >>> path is None or os.path.exists(path)
    True
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional

__all__ = ["BROWSER_NAMES", "Chromium", "ChromiumError", "find_chromium"]

#: Executable names tried, in order, on ``PATH``.
BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


class ChromiumError(RuntimeError):
    """The browser failed to start, closed, or answered a command with an error."""


def find_chromium() -> Optional[str]:
    """The Chromium executable: ``$CAMLIB_CHROMIUM``, else the first of :data:`BROWSER_NAMES` on ``PATH``; or None."""
    chosen = os.environ.get("CAMLIB_CHROMIUM")
    if chosen:
        return chosen if os.path.exists(chosen) else shutil.which(chosen)
    for name in BROWSER_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


class Chromium:
    """A headless Chromium with one page, driven over ``--remote-debugging-pipe``.

    Args:
        executable: The browser (default: :func:`find_chromium`).
        width: The window's (and screenshots') width in CSS pixels.
        height: Their height.
        timeout: Seconds to wait for any answer.

    Raises:
        ChromiumError: If no browser is found or it does not start.

    Use it in a ``with`` block; the browser and its profile folder are removed at exit.
    """

    def __init__(self, executable: Optional[str] = None, width: int = 1280, height: int = 800, timeout: float = 60.0) -> None:
        executable = executable or find_chromium()
        if not executable:
            raise ChromiumError("no Chromium found: install the chromium package, or set CAMLIB_CHROMIUM")
        self.timeout = timeout
        self.console: List[Dict[str, Any]] = []
        self._profile = tempfile.mkdtemp(prefix="camlib-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # the DevTools pipe is the child's fds 3 (commands in) and 4 (answers out)
        flags = [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe", "--no-first-run",
            "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
            "--disable-sync", "--disable-component-update", "--disable-dev-shm-usage", "--hide-scrollbars",
            "--mute-audio", "--force-device-scale-factor=1", "--font-render-hinting=none",
            f"--user-data-dir={self._profile}", f"--window-size={width},{height}", "about:blank",
        ]  # fmt: skip

        def wire() -> None:  # in the child: move the pipe ends clear of 3 and 4 first, then onto them
            high_r = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)
            high_w = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        try:
            self._process = subprocess.Popen(
                [executable, *flags], preexec_fn=wire, close_fds=False,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        except OSError as err:
            shutil.rmtree(self._profile, ignore_errors=True)
            raise ChromiumError(f"cannot start {executable}: {err}") from err
        finally:
            os.close(to_browser_r)
            os.close(from_browser_w)
        self._next_id = 0
        self._answers: Dict[int, Dict[str, Any]] = {}
        self._events: List[Dict[str, Any]] = []
        self._cond = threading.Condition()
        self._closed = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.session: Optional[str] = None
        targets = self.send("Target.getTargets")["targetInfos"]
        page = next((t["targetId"] for t in targets if t["type"] == "page"), None)
        if page is None:
            page = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=page, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable")
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    # ------------------------------------------------------------------ transport
    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                data = os.read(self._from_browser, 1 << 16)
            except OSError:
                data = b""
            if not data:
                with self._cond:
                    self._closed = True
                    self._cond.notify_all()
                return
            buffer += data
            while b"\0" in buffer:
                raw, buffer = buffer.split(b"\0", 1)
                message = json.loads(raw)
                with self._cond:
                    if "id" in message:
                        self._answers[message["id"]] = message
                    else:
                        self._event(message)
                    self._cond.notify_all()

    def _event(self, message: Dict[str, Any]) -> None:
        method, params = message.get("method"), message.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            self.console.append({"source": "console", "text": text})
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            text = details.get("exception", {}).get("description") or details.get("text", "")
            self.console.append({"source": "exception", "text": text})
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            self.console.append({"source": entry.get("source", "log"), "text": entry.get("text", ""), "url": entry.get("url")})
        self._events.append(message)

    def send(self, method: str, **params: Any) -> Dict[str, Any]:
        """Send one DevTools command (to the page once attached) and return its result.

        Raises:
            ChromiumError: On an error answer, a closed browser, or no answer within ``timeout``.
        """
        with self._cond:
            self._next_id += 1
            ident = self._next_id
        message: Dict[str, Any] = {"id": ident, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            message["sessionId"] = self.session
        try:
            os.write(self._to_browser, json.dumps(message).encode("utf-8") + b"\0")
        except OSError as err:
            raise ChromiumError(f"the browser closed its pipe ({err})") from err
        deadline = time.monotonic() + self.timeout
        with self._cond:
            while ident not in self._answers:
                left = deadline - time.monotonic()
                if self._closed or left <= 0:
                    raise ChromiumError(f"no answer to {method} ({'browser exited' if self._closed else 'timeout'})")
                self._cond.wait(left)
            answer = self._answers.pop(ident)
        if "error" in answer:
            raise ChromiumError(f"{method}: {answer['error'].get('message')}")
        return answer.get("result", {})

    # ------------------------------------------------------------------ page helpers
    def navigate(self, url: str, ready: Optional[str] = None) -> float:
        """Open ``url`` and wait for its load event (and for the JavaScript ``ready`` to be true).

        Returns:
            Seconds from the navigation to the end of the wait.
        """
        with self._cond:
            self._events.clear()
        started = time.perf_counter()
        self.send("Page.navigate", url=url)
        self.wait_event("Page.loadEventFired")
        if ready:
            self.wait_for(ready)
        return time.perf_counter() - started

    def wait_event(self, method: str) -> Dict[str, Any]:
        """Wait for the next event ``method`` (since the last navigation) and return its parameters."""
        deadline = time.monotonic() + self.timeout
        with self._cond:
            while True:
                for event in self._events:
                    if event.get("method") == method:
                        self._events.remove(event)
                        return event.get("params", {})
                left = deadline - time.monotonic()
                if self._closed or left <= 0:
                    raise ChromiumError(f"no {method} event")
                self._cond.wait(left)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (promises awaited).

        Raises:
            ChromiumError: If it throws.
        """
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise ChromiumError(f"{expression!r} threw: {details.get('exception', {}).get('description') or details.get('text')}")
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: Optional[float] = None) -> Any:
        """Poll a JavaScript expression until it is truthy; return its value."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise ChromiumError(f"{expression!r} did not become true within {timeout or self.timeout} s")
            time.sleep(0.02)

    def press(self, key: str, code: Optional[str] = None, key_code: int = 0) -> None:
        """Press and release a key (``"ArrowRight"``, ``"Enter"``, ``"Escape"``, ``"Tab"``...) in the page."""
        windows = {"Enter": 13, "Escape": 27, "Tab": 9, "ArrowLeft": 37, "ArrowUp": 38, "ArrowRight": 39, "ArrowDown": 40}
        key_code = key_code or windows.get(key, 0)
        extra = {"text": "\r"} if key == "Enter" else {}
        for kind in ("keyDown", "keyUp"):
            self.send("Input.dispatchKeyEvent", type=kind, key=key, code=code or key,
                      windowsVirtualKeyCode=key_code, **(extra if kind == "keyDown" else {}))

    def screenshot(self, path: Optional[str] = None) -> bytes:
        """A PNG of the viewport; written to ``path`` if given."""
        data = base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"])
        if path:
            with open(path, "wb") as handle:
                handle.write(data)
        return data

    def close(self) -> None:
        """Close the browser and delete its profile (harmless twice)."""
        if getattr(self, "_process", None) is None:
            return
        try:
            try:
                if not self._closed:
                    self.session = None
                    self.timeout = 5.0
                    self.send("Browser.close")
            except ChromiumError:
                pass
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        finally:
            for fd in (self._to_browser, self._from_browser):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._process = None
            shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, exc_type, exc_value, exc_tb) -> None:
        self.close()
