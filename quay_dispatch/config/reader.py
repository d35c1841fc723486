"""Reading the environment: one way for every setting, and every problem collected before any is reported; and the
checks several parsers share (a DNS name)."""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class ConfigError(Exception):
    """The configuration cannot be used; the message lists every problem and what to set."""


def listing(problems: list[str]) -> ConfigError:
    """The ConfigError that lists `problems`, one a line."""
    return ConfigError("configuration error:\n" + "\n".join(f"  - {p}" for p in problems))


class Env:
    """The environment's settings, stripped, with what is wrong with them gathered in `problems`."""

    def __init__(self, env: Mapping[str, str]):
        self._env = env
        self.problems: list[str] = []

    def named(self, *names: str) -> tuple[str, str | None]:
        """The first of `names` that is set, and its value; else the first name and None."""
        for name in names:
            value = self._env.get(name)
            if value is not None and value.strip() != "":
                return name, value.strip()
        return names[0], None

    def get(self, *names: str) -> str | None:
        return self.named(*names)[1]

    def flag(self, name: str) -> bool:
        value = (self._env.get(name) or "").strip().lower()
        if value in _TRUE:
            return True
        if value not in _FALSE:
            self.problems.append(f"{name}={self._env[name]!r} is not a boolean: use 1/true/yes/on or 0/false/no/off")
        return False

    def duration(self, name: str, default: str) -> float:
        """Seconds, from a duration such as 3600, 90m, 24h or 2d."""
        seconds = duration(self.get(name) or default)
        if seconds is None or seconds <= 0:
            self.problems.append(f"{name}={self.get(name)!r} is not a duration such as 3600, 90m, 24h or 2d")
            return 0.0
        return seconds

    def check(self) -> None:
        """Raise the ConfigError that lists every problem found so far, if any."""
        if self.problems:
            raise listing(self.problems)


def duration(text: str) -> float | None:
    """Seconds in '3600', '90s', '90m', '24h' or '2d'; None when unreadable."""
    match = _DURATION.fullmatch(text)
    if not match:
        return None
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def read_file(setting: str, path: str) -> bytes:
    """The contents of the file `setting` names, or a ConfigError with the setting, the path and why not."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        reason = "does not exist"
    except PermissionError:
        reason = f"cannot be read: permission denied (the service runs as uid {os.getuid()})"
    except IsADirectoryError:
        reason = "is a directory, not a file"
    except OSError as exc:
        reason = f"cannot be read: {(exc.strerror or str(exc)).lower()}"
    raise ConfigError(f"{setting}={path} {reason}")


_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")  # one part of a DNS name, as a certificate names it


def dns_name_problem(name: str, example: str) -> str | None:
    """Why `name` is not a plain DNS host name (an IP address, bad characters), or None; `example` is one that is."""
    try:
        ipaddress.ip_address(name)
        return f"an IP address is not allowed: use a host name, such as {example}"
    except ValueError:
        pass
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels) or labels[-1].isdigit():
        return f"not a valid host name (letters, digits and '-', in parts separated by dots), such as {example}"
    return None
