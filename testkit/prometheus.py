"""A real Prometheus on loopback (Debian's prometheus package), with the docs' scrape job and the shipped rules.

The scrape job is read from docs/operations.md ("Scrape configuration"), so the docs are what the test runs;
the rules are monitoring/alerts.yml with every `for:` shortened to FOR, a test-only copy.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import requests
import yaml

from testkit.service import ROOT, LoggedProcess, free_port, wait_until

RULES = ROOT / "monitoring" / "alerts.yml"
RULE_TESTS = ROOT / "monitoring" / "alerts.test.yml"
DASHBOARD = ROOT / "monitoring" / "grafana-dashboard.json"
OPERATIONS = ROOT / "docs" / "operations.md"
FOR = "2s"


def prometheus_missing() -> str | None:
    """Why Prometheus cannot run here, or None."""
    if not (shutil.which("prometheus") and shutil.which("promtool")):
        return "prometheus is not installed: `make test` installs it (Debian's prometheus) when run as root"
    return None


def documented_scrape_job() -> dict:
    """The scrape job operations.md gives, as data."""
    section = OPERATIONS.read_text().split("### Scrape configuration", 1)[1]
    block = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    (job,) = yaml.safe_load(block)["scrape_configs"]
    return job


class Prometheus(LoggedProcess):
    """Prometheus scraping `target` (host:port) every second with the documented job, evaluating the rules."""

    def __init__(self, workdir: Path, target: str, ca_file: str):
        """`target`: the service's page listener (ADMIN_BIND), which serves /metrics without a client certificate;
        its certificate is the test PKI's, for localhost."""
        job = documented_scrape_job()
        job["scrape_interval"] = job["scrape_timeout"] = "1s"
        job["static_configs"] = [{"targets": [target]}]
        job["tls_config"].update(ca_file=ca_file, server_name="localhost")
        rules = yaml.safe_load(RULES.read_text())
        for group in rules["groups"]:
            for rule in group["rules"]:
                if "for" in rule:
                    rule["for"] = FOR
        (workdir / "rules.yml").write_text(yaml.safe_dump(rules))
        (workdir / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": ["rules.yml"], "scrape_configs": [job]}))
        self.url = f"http://127.0.0.1:{free_port()}"
        super().__init__("prometheus", [
            "prometheus", f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address={self.url.removeprefix('http://')}", "--log.level=warn",
        ], ROOT, workdir / "prometheus.log")
        if not wait_until(self._ready, timeout=30):
            self.stop()
            raise AssertionError(f"prometheus did not start:\n{self.log()}")

    def _ready(self) -> bool:
        if self.exited():
            raise AssertionError(f"{self.exited()}:\n{self.log()}")
        try:
            return requests.get(self.url + "/-/ready", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def api(self, path: str, **params) -> dict:
        """An answer of the HTTP API (/api/v1/...), its data; an error answer fails the test with Prometheus' words."""
        answer = requests.get(f"{self.url}/api/v1/{path}", params=params, timeout=10).json()
        assert answer["status"] == "success", f"{path} {params}: {answer}"
        return answer["data"]

    def query(self, expr: str) -> list[dict]:
        return self.api("query", query=expr)["result"]

    def firing(self) -> set[str]:
        """The names of the alerts firing now."""
        return {a["labels"]["alertname"] for a in self.api("alerts")["alerts"] if a["state"] == "firing"}

    def wait_firing(self, alertname: str, timeout: float = 30.0) -> bool:
        return wait_until(lambda: alertname in self.firing(), timeout=timeout, interval=0.5)
