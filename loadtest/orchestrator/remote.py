"""`stackbench run --target NAME=URL`: a server this run did not start, on this host or
another. Its memory and CPU are read from its own /metrics (the default process collector's
`process_resident_memory_bytes` and `process_cpu_seconds_total`) instead of /proc."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

NAME = re.compile(r"[A-Za-z0-9][\w.-]{0,63}")
RSS_METRIC = "process_resident_memory_bytes"
CPU_METRIC = "process_cpu_seconds_total"


class TargetError(ValueError):
    """A --target the run cannot use (one line for the user)."""


def parse_target(text: str) -> tuple[str, str]:
    """NAME=URL -> (name, base URL without a trailing slash)."""
    name, sep, url = text.partition("=")
    parts = urlsplit(url)
    if not sep or not NAME.fullmatch(name):
        raise TargetError(f"--target {text!r}: expected NAME=URL, e.g. gevent=http://10.0.0.5:8080")
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        raise TargetError(f"--target {text!r}: the URL must be http(s)://HOST[:PORT]")
    try:
        parts.port  # noqa: B018 (raises on a port out of range)
    except ValueError:
        raise TargetError(f"--target {text!r}: bad port") from None
    return name, url.rstrip("/")


def process_figures(samples: list | None) -> tuple[float | None, float | None]:
    """(RSS bytes, CPU seconds) a server reports about its own process, from one scrape."""
    if samples is None:
        return None, None
    found = {s.name: s.value for s in samples if s.name in (RSS_METRIC, CPU_METRIC)}
    return found.get(RSS_METRIC), found.get(CPU_METRIC)


class _Elsewhere:
    """Stands in for the process of a server this run did not start: it never exits as far
    as the run can tell (a server that dies shows as scrapes that fail)."""

    returncode = None

    def poll(self) -> None:
        return None


@dataclass
class RemoteServer:
    impl: str  # the target's NAME: the row it gets in the results
    url: str
    pid: None = None
    process: _Elsewhere = _Elsewhere()  # noqa: RUF009 (stateless)

    def __enter__(self) -> RemoteServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass
