"""A real headless Chromium (Debian's chromium, driven through Debian's chromium-driver by Selenium): nothing is
downloaded, both paths are given. Also the page another site would serve to attack the operator's page."""

from __future__ import annotations

import shutil
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from testkit.service import ROOT

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
AXE = ROOT / "var" / "axe" / "node_modules" / "axe-core" / "axe.min.js"
LAPTOP, PHONE = (1280, 900), (390, 844)


def chromium_missing() -> str | None:
    """Why Chromium cannot run here, or None."""
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        return "chromium is not installed: `make test` installs it (Debian's chromium, chromium-driver) when root"
    return None


class Browser:
    """One headless Chromium with a profile of its own, its console kept."""

    def __init__(self, size: tuple[int, int] = LAPTOP):
        from selenium import webdriver  # here: only the browser tests need it

        self.profile = tempfile.mkdtemp(prefix="quay-dispatch-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                         "--no-first-run", "--disable-extensions", f"--user-data-dir={self.profile}",
                         f"--window-size={size[0]},{size[1]}"):
            options.add_argument(argument)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(CHROMEDRIVER))
        self.driver.set_page_load_timeout(20)
        self.driver.set_script_timeout(20)

    def console(self) -> list[str]:
        """What the pages said in the console since the last call."""
        return [entry["message"] for entry in self.driver.get_log("browser")]

    def accessibility_problems(self) -> list[str]:
        """axe-core's serious and critical violations on the page shown now."""
        self.driver.execute_script(AXE.read_text())
        found = self.driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "axe.run(document).then(r => done(r.violations.map(v => [v.impact, v.id, v.help, v.nodes.length])));")
        return [f"{impact} {rule}: {words} ({nodes} elements)" for impact, rule, words, nodes in found
                if impact in ("serious", "critical")]

    def close(self) -> None:
        self.driver.quit()
        shutil.rmtree(self.profile, ignore_errors=True)


class HostilePage:
    """Another site on another loopback port: its page auto-submits a form to each of `targets` (URL -> fields)
    of the operator's page, each into a frame of its own, as a cross-site request forgery would."""

    def __init__(self, targets: dict[str, dict[str, str]]):
        forms = "".join(
            f'<iframe name="f{i}"></iframe><form method="post" target="f{i}" action="{url}">'
            + "".join(f'<input type="hidden" name="{k}" value="{v}">' for k, v in fields.items()) + "</form>"
            for i, (url, fields) in enumerate(targets.items()))
        page = (f"<!doctype html><html><body>{forms}<script>for (const f of document.forms) f.submit();"
                "document.title = 'sent';</script></body></html>").encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
