"""Which servers a Locust test loads, decided without I/O (and without Locust, so the rules are
unit-tested in the test process).

A test loads the host given to Locust (`--host`, or the web UI's Host field) or, with none,
every server of STACKBENCH_TARGETS. The web UI's Host field starts with the first of those
servers (Locust shows one URL there); a test started with it unchanged loads all of them.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

from loadtest.driver.settings import ALLOW_REMOTE, TARGETS, ConfigError

__all__ = ["Target", "chosen_targets", "default_host", "is_loopback", "parse_targets"]


@dataclass(frozen=True)
class Target:
    url: str
    # The name given in STACKBENCH_TARGETS, else host:port. Rows and metrics are named by the
    # server's own X-Stackbench-Impl header instead where it sends one.
    given_name: str


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: not resolved here, so it is not assumed to be local


def parse_targets(spec: str, allow_remote: bool = False) -> list[Target]:
    """`gevent=http://h:1,trio=http://h:2` (or bare URLs). Load goes to loopback addresses only
    unless `allow_remote` (STACKBENCH_ALLOW_REMOTE=1) says otherwise."""
    targets = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, url = item.rpartition("=") if "=" in item else ("", "", item)
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"target {item!r} is not a URL like http://127.0.0.1:8081")
        if not allow_remote and not is_loopback(parts.hostname or ""):
            raise ConfigError(
                f"target {url} is not a loopback address; to load another host on purpose, "
                f"set {ALLOW_REMOTE}=1"
            )
        targets.append(Target(url.rstrip("/"), name or parts.netloc))
    if not targets:
        raise ConfigError(f"no target: pass --host (or fill in the web UI's Host) or set {TARGETS}")
    return targets


def default_host(configured: str) -> str | None:
    """What the web UI's Host field starts with: the first server of STACKBENCH_TARGETS (its
    URL, without the name), or nothing."""
    first = configured.split(",")[0].strip()
    url = first.rpartition("=")[2] if "=" in first else first
    return url.rstrip("/") or None


def chosen_targets(host: str | None, configured: str, allow_remote: bool) -> list[Target]:
    """The servers a test loads, given Locust's host and STACKBENCH_TARGETS; ConfigError (one
    line for the user) when there is none or one is refused."""
    host = (host or "").strip()
    if not host or (configured and host.rstrip("/") == default_host(configured)):
        return parse_targets(configured, allow_remote)
    return parse_targets(host, allow_remote)
