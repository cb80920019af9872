"""The three equivalent stackbench servers.

- `contract`: the HTTP contract (routes, limits, bodies, errors), free of I/O.
- `telemetry`: the Prometheus metrics every server exports.
- `lifecycle`: options, listening socket, response heads: what serving has in common.
- `gevent_server`, `trio_server`, `aiohttp_server`: the same contract served three ways.
"""

# Module name of each implementation, imported only in the process that serves it (gevent's
# monkey patching must not leak into anything else).
SERVER_MODULES = {
    "gevent": "servers.gevent_server",
    "trio": "servers.trio_server",
    "aiohttp": "servers.aiohttp_server",
}
