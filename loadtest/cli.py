"""`stackbench`: the command line. Sub-commands import what they need when they run, so that
`stackbench serve gevent` can monkey-patch before anything else touches sockets."""

from __future__ import annotations

import argparse
import importlib
import sys

from servers import SERVER_MODULES


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535)")
    return int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (0-3600)")
    return value


def build_parser() -> argparse.ArgumentParser:
    from servers.lifecycle import DEFAULT_DRAIN_TIMEOUT_S, DEFAULT_HOST, DEFAULT_PORT

    parser = argparse.ArgumentParser(
        prog="stackbench",
        description="What does the concurrency model of a Python HTTP server cost? "
        "gevent (stackful) vs trio and aiohttp (stackless), measured side by side.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="serve the HTTP contract from one implementation",
        description="Serve the stackbench HTTP contract (see DESIGN) from one implementation, "
        "in this process, until SIGTERM or SIGINT.",
    )
    serve.add_argument("impl", choices=sorted(SERVER_MODULES), help="which server")
    serve.add_argument("--host", default=DEFAULT_HOST, help=f"address (default {DEFAULT_HOST})")
    serve.add_argument(
        "--port", type=_port, default=DEFAULT_PORT, help=f"port, 0 for any (default {DEFAULT_PORT})"
    )
    serve.add_argument(
        "--no-metrics",
        dest="metrics",
        action="store_false",
        help="switch telemetry off (to measure what it costs); /metrics then answers 404",
    )
    serve.add_argument(
        "--drain-timeout",
        type=_seconds,
        default=DEFAULT_DRAIN_TIMEOUT_S,
        metavar="SECONDS",
        help="on SIGTERM/SIGINT, how long in-flight requests get to finish "
        f"(default {DEFAULT_DRAIN_TIMEOUT_S:g})",
    )
    serve.add_argument("--uvloop", action="store_true", help="aiohttp only: run asyncio on uvloop")
    serve.set_defaults(run=_serve)

    demo = commands.add_parser(
        "demo",
        help="start all three servers side by side and check they answer alike",
        description="Start gevent, trio and aiohttp on consecutive ports, show that they give "
        "identical answers, and serve until Ctrl-C.",
    )
    demo.add_argument(
        "--base-port",
        type=_port,
        default=DEFAULT_PORT + 1,
        help=f"gevent's port; trio and aiohttp take the next two (default {DEFAULT_PORT + 1})",
    )
    demo.add_argument(
        "--duration", type=_seconds, default=None, metavar="SECONDS", help="stop after this long"
    )
    demo.set_defaults(run=_demo)
    return parser


def _serve(args: argparse.Namespace) -> None:
    if args.uvloop and args.impl != "aiohttp":
        _fail("--uvloop applies to the aiohttp server only")
    # Import the server first: gevent's must monkey-patch before the rest loads.
    server = importlib.import_module(SERVER_MODULES[args.impl])
    from servers.lifecycle import ServeError, ServeOptions

    options = ServeOptions(
        host=args.host,
        port=args.port,
        metrics=args.metrics,
        drain_timeout=args.drain_timeout,
        uvloop=args.uvloop,
    )
    try:
        server.serve(options)
    except ServeError as exc:
        _fail(str(exc))


def _demo(args: argparse.Namespace) -> None:
    from loadtest.demo import ServerStartError, run_demo

    try:
        run_demo(args.base_port, args.duration)
    except ServerStartError as exc:
        _fail(str(exc))


def _fail(message: str) -> None:
    print(f"stackbench: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except KeyboardInterrupt:
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
