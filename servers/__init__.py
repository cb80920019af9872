"""The equivalent stackbench servers, in two tiers (see `contract.TIERS`).

- `contract`: the HTTP contract (routes, limits, bodies, errors), free of I/O.
- `telemetry`: the Prometheus metrics every server exports.
- `lifecycle`: options, listening socket, response heads: what serving has in common.
- `protocol`: the runtime tier's shared HTTP/1.1 core (h11) and connection policy, free of I/O.
- `runtime`: the runtime tier's adapters, one per runtime: trio, gevent, asyncio, threads.
- `gevent_server`, `aiohttp_server`: the stack tier's gevent.pywsgi and aiohttp servers.
"""

# Module name of each implementation, imported only in the process that serves it (gevent's
# monkey patching must not leak into anything else).
SERVER_MODULES = {
    "gevent": "servers.gevent_server",
    "trio": "servers.runtime.trio_h11",
    "aiohttp": "servers.aiohttp_server",
    "gevent-h11": "servers.runtime.gevent_h11",
    "asyncio-h11": "servers.runtime.asyncio_h11",
    "threads-h11": "servers.runtime.threads_h11",
}
