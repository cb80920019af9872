"""`stackbench`: the command line. Sub-commands import what they need when they run, so that
`stackbench serve gevent` can monkey-patch before anything else touches sockets."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import sys
import time
from pathlib import Path

from servers import SERVER_MODULES
from servers.native import NATIVE_SERVERS


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535)")
    return int(text)


def _step_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 1 <= seconds <= 3600:
        # Samples come twice a second and a level's first is the ramp: below 1 s nothing
        # would be left to measure.
        raise argparse.ArgumentTypeError(f"{text!r} is not a step length (1-3600 seconds)")
    return seconds


def _base_port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65533:
        raise argparse.ArgumentTypeError(
            f"{text!r}: the three servers take this port and the next two (1-65533)"
        )
    return int(text)


def _timeout(text: str) -> float:
    seconds = _seconds(text)
    if seconds < 0.1:
        raise argparse.ArgumentTypeError(f"{text!r}: a timeout must be at least 0.1 seconds")
    return seconds


def _connections(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 1_000_000:
        raise argparse.ArgumentTypeError(f"{text!r} is not a connection count (1-1000000)")
    return int(text)


def _cores(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 1024:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of cores (1-1024)")
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
    from servers.lifecycle import (
        DEFAULT_DRAIN_TIMEOUT_S,
        DEFAULT_HEADER_TIMEOUT_S,
        DEFAULT_HOST,
        DEFAULT_IDLE_TIMEOUT_S,
        DEFAULT_MAX_CONNECTIONS,
        DEFAULT_PORT,
    )

    parser = argparse.ArgumentParser(
        prog="stackbench",
        description="What does the concurrency model of a Python HTTP server cost? "
        "gevent (stackful) vs trio and aiohttp (stackless), measured side by side.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="serve the HTTP contract from one implementation",
        description="Serve the stackbench HTTP contract (README: The HTTP contract) from one "
        "implementation, "
        "in this process, until SIGTERM or SIGINT.",
    )
    serve.add_argument(
        "impl", choices=sorted([*SERVER_MODULES, *NATIVE_SERVERS]), help="which server"
    )
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
    serve.add_argument(
        "--idle-timeout",
        type=_timeout,
        default=DEFAULT_IDLE_TIMEOUT_S,
        metavar="SECONDS",
        help="close a connection silent this long before or between requests "
        f"(default {DEFAULT_IDLE_TIMEOUT_S:g})",
    )
    serve.add_argument(
        "--header-timeout",
        type=_timeout,
        default=DEFAULT_HEADER_TIMEOUT_S,
        metavar="SECONDS",
        help="close a connection whose request line and headers take longer than this to "
        f"arrive (default {DEFAULT_HEADER_TIMEOUT_S:g})",
    )
    serve.add_argument(
        "--max-connections",
        type=_connections,
        default=DEFAULT_MAX_CONNECTIONS,
        metavar="N",
        help="past N open connections, answer new ones 503 and close them "
        f"(default {DEFAULT_MAX_CONNECTIONS})",
    )
    serve.add_argument(
        "--uvloop", action="store_true", help="aiohttp and asyncio-h11: run asyncio on uvloop"
    )
    serve.add_argument(
        "--no-cancel-on-disconnect",
        dest="cancel_on_disconnect",
        action="store_false",
        help="aiohttp only: let handlers run on after their client has gone (aiohttp's "
        "default; stackbench cancels them, as gevent and trio do)",
    )
    serve.add_argument(
        "--upstream",
        metavar="URL",
        help="what GET /upstream calls: an http://host:port that answers /sleep?ms=N (any "
        "stackbench server); without it /upstream answers 503",
    )
    serve.add_argument(
        "--upstream-pool",
        type=int,
        default=100,
        metavar="N",
        help="keep-alive connections the server's HTTP client keeps to the upstream; calls "
        "beyond them wait for one (default 100)",
    )
    serve.add_argument(
        "--upstream-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="deadline of an /upstream request's calls, waiting for a pooled connection "
        "included; past it the answer is 504 (default 10)",
    )
    serve.add_argument(
        "--database",
        metavar="URL",
        help="what the database routes (/db, /queries, /fortunes, /updates, /dbsleep) query: "
        "a postgresql://user@host:port/db URL holding servers/db/world.sql's tables; without it "
        "they answer 503",
    )
    serve.add_argument(
        "--db-pool",
        type=int,
        default=16,
        metavar="N",
        help="the most database connections the server process opens; requests beyond them "
        "wait for one (default 16)",
    )
    serve.add_argument(
        "--db-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="deadline of a request's queries, waiting for a pooled connection included; "
        "past it the answer is 504 (default 10)",
    )
    serve.add_argument(
        "--db-driver",
        metavar="NAME",
        help="the database driver, where a server has more than one (default: its world's own)",
    )
    serve.add_argument(
        "--cores",
        type=_cores,
        default=1,
        metavar="N",
        help="go-nethttp and rust-hyper: run on N cores (GOMAXPROCS, tokio worker threads); "
        "default 1, as the Python servers",
    )
    serve.set_defaults(run=_serve)

    demo = commands.add_parser(
        "demo",
        help="start all three servers side by side and check they answer alike",
        description="Start gevent, trio and aiohttp on consecutive ports, show that they give "
        "identical answers, and serve until Ctrl-C.",
    )
    demo.add_argument(
        "--base-port",
        type=_base_port,
        default=DEFAULT_PORT + 1,
        help=f"gevent's port; trio and aiohttp take the next two (default {DEFAULT_PORT + 1})",
    )
    demo.add_argument(
        "--duration", type=_seconds, default=None, metavar="SECONDS", help="stop after this long"
    )
    demo.set_defaults(run=_demo)

    from loadtest.driver.scenarios import SCENARIOS
    from loadtest.orchestrator.profiles import CORE_SCENARIOS, PROFILES
    from servers.contract import STACK_TIER, TIERS

    live = commands.add_parser(
        "live",
        help="the live view without Docker: servers, Locust's web UI and Prometheus",
        description="Start the servers side by side, Locust's web UI on a scenario aimed at "
        "all of them, and Prometheus (and Grafana, if on the PATH) scraping them with a "
        "generated local config; print where each is; stop everything on Ctrl-C.",
    )
    live.add_argument(
        "--tier", choices=[*TIERS, "all"], default="stack",
        help="which servers (default stack: gevent, trio, aiohttp)",
    )  # fmt: skip
    live.add_argument(
        "--scenario", default="mixed", help="the Locust file the web UI runs (default mixed)"
    )
    for option, default, what in (
        ("--base-port", DEFAULT_PORT + 1, "the first server's port; the others take the next ones"),
        ("--locust-port", 8089, "Locust's web UI"),
        ("--client-metrics-port", 9646, "Locust's client metrics (taken: the next free one)"),
        ("--prometheus-port", 9090, "Prometheus"),
        ("--grafana-port", 3000, "Grafana, if one is on the PATH"),
    ):
        live.add_argument(option, type=_port, default=default, help=f"{what} (default {default})")
    live.add_argument(
        "--duration", type=_seconds, default=None, metavar="SECONDS", help="stop after this long"
    )
    live.set_defaults(run=_live)

    run = commands.add_parser(
        "run",
        help="measure the servers side by side and write results and an HTML report",
        description="Start each server in turn pinned to one CPU, drive it on another (Locust "
        "for the behavioural scenarios, the rate driver for the rate sweep, raw held "
        "connections for memory), sample everything to disk, and write results.json and "
        "report.html.",
    )
    run.add_argument(
        "--tier",
        choices=[*TIERS, "all"],
        default="stack",
        help="which servers: stack (gevent, trio, aiohttp: what people deploy; default), "
        "runtime (gevent-h11, asyncio-h11, trio, threads-h11: one HTTP core, the runtimes "
        "compared), or all",
    )
    run.add_argument(
        "--servers",
        help=f"comma-separated, instead of a tier (default: {','.join(STACK_TIER)})",
    )
    quick = PROFILES["quick"].scenarios
    run.add_argument(
        "--scenarios",
        help=f"comma-separated (default: the profile's: {','.join(CORE_SCENARIOS)}, and in "
        f"quick {','.join(quick)}, the rate sweep standing for Locust's plaintext; also: "
        f"{','.join(s for s in SCENARIOS if s not in CORE_SCENARIOS)})",
    )
    run.add_argument(
        "--profile",
        choices=list(PROFILES),
        default="quick",
        help="how long and how hard: smoke (seconds), quick (< 4.5 min, default), "
        "standard (3 repeats), full",
    )
    run.add_argument(
        "--slo-ms",
        type=_slo_ms,
        default=10.0,
        metavar="MS",
        help="the latency objective of the rate sweep: its sustainable throughput is the "
        "highest offered rate served in full (achieved/offered >= 0.99) with a p99 from the "
        "intended send within it (default 10)",
    )
    run.add_argument("--repeat", type=_count, help="repeat the whole run N times (medians)")
    run.add_argument(
        "--step-seconds",
        type=_step_seconds,
        help="seconds per load level (default: the profile's)",
    )
    run.add_argument(
        "--target",
        action="append",
        metavar="NAME=URL",
        help="drive a server this run does not start, on this host or another (repeatable; "
        "instead of --tier/--servers): its memory and CPU are read from its own /metrics",
    )
    run.add_argument(
        "--locust-workers",
        type=_workers,
        metavar="N",
        help="drive each scenario from a Locust master and N separate `locust --worker` "
        "processes on the driver's CPUs, every worker's requests collected (default: one "
        "worker per driver CPU; one Locust process alone where there is one driver CPU)",
    )
    run.add_argument("--out", type=Path, help="output directory (default results/<timestamp>)")
    run.set_defaults(run=_run)

    report = commands.add_parser(
        "report", help="rebuild results.json and report.html from a run directory"
    )
    report.add_argument("dir", type=Path)
    report.set_defaults(run=_report)

    compare = commands.add_parser(
        "compare",
        help="what got better or worse between two runs, beyond their noise",
        description="Compare the headline figures of two runs (results.json files or run "
        "directories). A change is called only outside both runs' spread and, with 3 or more "
        "repeats a side, significant (Welch's t-test, p < 0.05).",
    )
    compare.add_argument("before", type=Path)
    compare.add_argument("after", type=Path)
    compare.add_argument("--json", action="store_true", help="print the comparison as JSON")
    compare.add_argument(
        "--force",
        action="store_true",
        help="compare runs of different profiles, scenario parameters or stackbench versions",
    )
    compare.set_defaults(run=_compare)

    tasks = commands.add_parser(
        "tasks",
        help="memory per idle task, spawn and switch cost: greenlets, asyncio, trio, threads, "
        "goroutines, tokio tasks",
        description="Park N idle tasks in each runtime (each in its own process: Python's, and "
        "the native servers' binaries for a goroutine and a tokio task) and report the RSS per "
        "task, spawn time and switch cost; then what a call from Go into C (cgo) costs.",
    )
    tasks.add_argument(
        "--scale", type=_scale, default=1.0,
        help="multiply the task counts (10k and 100k; OS threads 1k and 10k) by this",
    )  # fmt: skip
    tasks.add_argument(
        "--depths", default="0,10",
        help="calls below each parked task (Python frames; nested Go calls or async fns), "
        "comma-separated (default 0,10)",
    )  # fmt: skip
    tasks.add_argument("--out", type=Path, help="where to write tasks.json and tasks.html")
    tasks.set_defaults(run=_tasks)
    return parser


def _serve(args: argparse.Namespace) -> None:
    if args.uvloop and args.impl not in ("aiohttp", "asyncio-h11"):
        _fail("--uvloop applies to the aiohttp and asyncio-h11 servers only")
    if not args.cancel_on_disconnect and args.impl != "aiohttp":
        _fail("--no-cancel-on-disconnect applies to the aiohttp server only")
    if args.cores != 1 and args.impl not in NATIVE_SERVERS:
        _fail("--cores applies to the go-nethttp and rust-hyper servers only")
    if args.impl in NATIVE_SERVERS:
        _exec_native(args)
    # Import the server first: gevent's must monkey-patch before the rest loads.
    server = importlib.import_module(SERVER_MODULES[args.impl])
    from servers.lifecycle import ServeError, ServeOptions

    upstream = _upstream(args)
    database = _database(args)
    options = ServeOptions(
        host=args.host,
        port=args.port,
        metrics=args.metrics,
        drain_timeout=args.drain_timeout,
        idle_timeout=args.idle_timeout,
        header_timeout=args.header_timeout,
        max_connections=args.max_connections,
        uvloop=args.uvloop,
        cancel_on_disconnect=args.cancel_on_disconnect,
        upstream=upstream,
        database=database,
    )
    try:
        server.serve(options)
    except ServeError as exc:
        _fail(str(exc))


def _upstream(args: argparse.Namespace):  # -> servers.upstream.UpstreamConfig | None
    """`--upstream` and its settings, checked alike for every server."""
    from servers.upstream import DEFAULT_POOL, DEFAULT_TIMEOUT_S, UpstreamConfig

    if args.upstream is not None:
        try:
            return UpstreamConfig.parse(args.upstream, args.upstream_pool, args.upstream_timeout)
        except ValueError as exc:
            _fail(str(exc))
    if (args.upstream_pool, args.upstream_timeout) != (DEFAULT_POOL, DEFAULT_TIMEOUT_S):
        _fail("--upstream-pool and --upstream-timeout need --upstream URL")
    return None


def _database(args: argparse.Namespace):  # -> servers.db.config.DatabaseConfig | None
    """`--database` and its settings, checked alike for every server."""
    from servers.db.config import DEFAULT_POOL, DEFAULT_TIMEOUT_S, DatabaseConfig

    if args.database is not None:
        try:
            return DatabaseConfig.parse(
                args.database, args.impl, args.db_pool, args.db_timeout, args.db_driver
            )
        except ValueError as exc:
            _fail(str(exc))
    if (args.db_pool, args.db_timeout, args.db_driver) != (DEFAULT_POOL, DEFAULT_TIMEOUT_S, None):
        _fail("--db-pool, --db-timeout and --db-driver need --database URL")
    return None


def _exec_native(args: argparse.Namespace) -> None:
    """Replace this process with the native server (built first if need be), so that the pid
    the orchestrator pins and measures is the server's own."""
    from servers.native import NativeBuildError, exec_argv

    options = [
        "--host", args.host, "--port", str(args.port),
        "--drain-timeout", f"{args.drain_timeout:g}", "--idle-timeout", f"{args.idle_timeout:g}",
        "--header-timeout", f"{args.header_timeout:g}",
        "--max-connections", str(args.max_connections), "--cores", str(args.cores),
    ]  # fmt: skip
    if not args.metrics:
        options.append("--no-metrics")
    if (upstream := _upstream(args)) is not None:
        options += ["--upstream", upstream.url,
                    "--upstream-pool", str(upstream.pool),
                    "--upstream-timeout", f"{upstream.timeout:g}"]  # fmt: skip
    if (database := _database(args)) is not None:
        options += ["--database", database.url, "--db-pool", str(database.pool),
                    "--db-timeout", f"{database.timeout:g}"]  # fmt: skip
    try:
        argv = exec_argv(args.impl, options)
    except NativeBuildError as exc:
        _fail(str(exc))
    if args.cores > (os.cpu_count() or 1):
        print(
            f"stackbench: warning: --cores {args.cores} is more than this machine's "
            f"{os.cpu_count()} CPUs",
            file=sys.stderr,
        )
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execv(argv[0], argv)
    except OSError as exc:
        _fail(f"cannot run {argv[0]}: {exc.strerror or exc}")


def _demo(args: argparse.Namespace) -> None:
    from loadtest.orchestrator.demo import run_demo
    from loadtest.orchestrator.serverproc import ServerStartError

    try:
        run_demo(args.base_port, args.duration)
    except ServerStartError as exc:
        _fail(str(exc))


def _live(args: argparse.Namespace) -> None:
    from loadtest.driver.scenarios import SCENARIOS
    from loadtest.orchestrator.live import LiveError, Ports, run_live
    from loadtest.orchestrator.serverproc import ServerStartError
    from servers.contract import IMPLS, TIERS

    if args.scenario not in SCENARIOS:
        _fail(f"unknown scenario {args.scenario!r}; choose from {', '.join(SCENARIOS)}")
    servers = list(IMPLS if args.tier == "all" else TIERS[args.tier])
    if args.base_port + len(servers) - 1 > 65535:
        _fail(f"--base-port {args.base_port}: the {len(servers)} servers need the ports after it")
    ports = Ports(
        servers=args.base_port, locust=args.locust_port, client_metrics=args.client_metrics_port,
        prometheus=args.prometheus_port, grafana=args.grafana_port,
    )  # fmt: skip
    try:
        run_live(servers, args.scenario, ports, args.duration)
    except (LiveError, ServerStartError) as exc:
        _fail(str(exc))


def _slo_ms(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.01 <= value <= 600_000:
        raise argparse.ArgumentTypeError(f"must be milliseconds from 0.01 to 600000, not {text!r}")
    return value


def _workers(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 64:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of Locust workers (1-64)")
    return int(text)


def _count(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 100:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count from 1 to 100")
    return int(text)


def _run(args: argparse.Namespace) -> None:
    from loadtest.orchestrator import run
    from loadtest.orchestrator.profiles import PROFILES
    from loadtest.orchestrator.remote import TargetError, parse_target
    from servers.contract import IMPLS, TIERS

    try:
        remote = tuple(parse_target(text) for text in args.target or ())
    except TargetError as exc:
        _fail(str(exc))
    if remote:
        servers = [name for name, _ in remote]
        if len(set(servers)) < len(servers):
            _fail("--target: each NAME once")
    elif args.servers is not None:
        servers = [s for s in args.servers.split(",") if s]
    else:
        servers = list(IMPLS if args.tier == "all" else TIERS[args.tier])
    profile = PROFILES[args.profile]
    scenarios = (
        [s for s in args.scenarios.split(",") if s]
        if args.scenarios is not None
        else list(profile.scenarios)
    )
    if args.step_seconds:
        profile = dataclasses.replace(profile, step_seconds=args.step_seconds)
    out = args.out or run.default_out()
    try:
        run.validate(servers, scenarios, tuple(servers) if remote else ())
        plan = run.Plan(
            servers=tuple(servers),
            scenarios=tuple(scenarios),
            profile=profile,
            repeat=args.repeat or profile.repeat,
            out=out,
            remote=remote,
            locust_workers=args.locust_workers,
            slo_ms=args.slo_ms,
        )
        written = run.execute(plan)
    except run.RunError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        print(f"interrupted: partial results in {out}/report.html", file=sys.stderr)
        raise SystemExit(130) from None
    print(f"results: {written}/results.json")
    print(f"report:  {written}/report.html")


def _report(args: argparse.Namespace) -> None:
    from loadtest.reporting import report, results

    try:
        built = results.build(args.dir)
        results.write(args.dir, built)
        print(f"report: {report.write(args.dir, built)}")
    except results.ResultsError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot write into {args.dir}: {exc.strerror or exc}")


def _compare(args: argparse.Namespace) -> None:
    import json

    from loadtest.reporting import compare, results

    try:
        before, after = results.load(args.before), results.load(args.after)
    except results.ResultsError as exc:
        _fail(str(exc))
    reason = compare.incompatibility(before, after)
    if reason and not args.force:
        _fail(f"not comparable: {reason} (--force compares them anyway)")
    notes = compare.warnings(before, after) + ([f"forced: {reason}"] if reason else [])
    changes = compare.compare(before, after)
    if args.json:
        print(json.dumps({"warnings": notes, "changes": [c.as_json() for c in changes]},
                         indent=2))  # fmt: skip
        return
    for note in notes:
        print(f"warning: {note}", file=sys.stderr)
    if not changes:
        _fail("the two runs have no headline figure in common (no server and scenario both ran)")
    print("\n".join(change.line() for change in changes))
    called = [c for c in changes if c.verdict in ("better", "worse")]
    if called:
        print(f"{len(called)} change(s) called of {len(changes)} figures")
    elif any(c.verdict.startswith("indicative") for c in changes):
        print(
            "no change called: with one repeat a side there is no spread to call one against "
            "(run both with --repeat 3)"
        )
    else:
        print("no change")


def _scale(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0.001 <= value <= 10:
        raise argparse.ArgumentTypeError(f"{text!r} is not a scale from 0.001 to 10")
    return value


def _tasks(args: argparse.Namespace) -> None:
    from loadtest.orchestrator import tasks

    try:
        depths = tuple(int(d) for d in args.depths.split(","))
    except ValueError:
        depths = (-1,)
    if any(not 0 <= d <= 200 for d in depths):
        _fail(f"--depths {args.depths!r}: expected frame counts from 0 to 200, e.g. 0,10")
    from servers.native import NativeBuildError

    try:
        rows = tasks.run_all(args.scale, depths, lambda text: print(text, file=sys.stderr))
        cgo = tasks.measure_cgo()
    except (NativeBuildError, RuntimeError, OSError) as exc:
        _fail(str(exc))
    print(tasks.table(rows, cgo))
    out = args.out or Path("results") / f"tasks-{time.strftime('%Y%m%d-%H%M%S')}"
    print(f"chart: {tasks.write(out, rows, cgo)}")


def _fail(message: str) -> None:
    print(f"stackbench: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
        sys.stdout.flush()
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except BrokenPipeError:
        # The reader left (`stackbench compare A B | head`): not an error of ours. Point
        # stdout at /dev/null so that the interpreter's last flush does not complain.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


if __name__ == "__main__":
    main()
