//! stackbench's HTTP contract on tokio + hyper 0.14: the native archetype of the stackless
//! model (futures polled by a runtime, explicit `.await`), beside asyncio and trio.
//!
//! `stackbench serve rust-hyper` builds and execs this binary with the Python servers'
//! options; `--measure-tasks N --depth D` is `stackbench tasks`' measurer for a tokio task;
//! `--bare` serves the benchmarks' bare reference (bare.rs); `--encode-lag` prints the /lag
//! body of the lags on stdin (hdr.rs).

mod bare;
mod contract;
mod gate;
mod hdr;
mod metrics;
mod policy;
mod server;
mod upstream;

use std::io::Write;
use std::net::ToSocketAddrs;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpSocket;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::gate::Timeouts;
use crate::metrics::{Info, Live, Telemetry, LAG_INTERVAL_S};
use crate::server::{App, TaskGuard};
use crate::upstream::Upstream;

const LISTEN_BACKLOG: u32 = 2048;
const TOKIO_VERSION: &str = env!("STACKBENCH_TOKIO_VERSION");
const HYPER_VERSION: &str = env!("STACKBENCH_HYPER_VERSION");

struct Options {
    impl_name: String,
    host: String,
    port: u16,
    drain_timeout: f64,
    idle_timeout: f64,
    header_timeout: f64,
    max_connections: i64,
    cores: usize,
    metrics: bool,
    upstream: Option<String>,
    upstream_pool: usize,
    upstream_timeout: String,
    measure_tasks: Option<usize>,
    depth: usize,
    bare: bool,
}

/// One line on stderr, exit 2: a problem the user can fix.
fn fail(message: &str) -> ! {
    eprintln!("stackbench: error: {}", message); // as the Python CLI (argparse) says it
    std::process::exit(2);
}

fn seconds(flag: &str, text: &str) -> f64 {
    match text.parse::<f64>() {
        Ok(value) if value >= 0.0 && value.is_finite() => value,
        _ => fail(&format!("{} {:?} is not a number of seconds", flag, text)),
    }
}

fn number<T: std::str::FromStr>(flag: &str, text: &str) -> T {
    text.parse().unwrap_or_else(|_| fail(&format!("{} {:?} is not a number", flag, text)))
}

fn parse_args() -> Options {
    let mut options = Options {
        impl_name: "rust-hyper".into(),
        host: "127.0.0.1".into(),
        port: 8080,
        drain_timeout: 10.0,
        idle_timeout: 60.0,
        header_timeout: 10.0,
        max_connections: 10_000,
        cores: 1,
        metrics: true,
        upstream: None,
        upstream_pool: 100,
        upstream_timeout: "10".into(),
        measure_tasks: None,
        depth: 0,
        bare: false,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let flag = args[i].as_str();
        if flag == "--no-metrics" || flag == "--bare" {
            if flag == "--bare" {
                options.bare = true;
            } else {
                options.metrics = false;
            }
            i += 1;
            continue;
        }
        let value = match args.get(i + 1) {
            Some(value) => value.as_str(),
            None => fail(&format!("{} needs a value", flag)),
        };
        match flag {
            "--impl" => options.impl_name = value.into(),
            "--host" => options.host = value.into(),
            "--port" => options.port = number(flag, value),
            "--drain-timeout" => options.drain_timeout = seconds(flag, value),
            "--idle-timeout" => options.idle_timeout = seconds(flag, value),
            "--header-timeout" => options.header_timeout = seconds(flag, value),
            "--max-connections" => options.max_connections = number(flag, value),
            "--cores" => options.cores = number::<usize>(flag, value).max(1),
            "--upstream" => options.upstream = Some(value.trim_end_matches('/').into()),
            "--upstream-pool" => options.upstream_pool = number::<usize>(flag, value).max(1),
            "--upstream-timeout" => options.upstream_timeout = value.into(),
            "--measure-tasks" => options.measure_tasks = Some(number(flag, value)),
            "--depth" => options.depth = number(flag, value),
            _ => fail(&format!("unknown option {}", flag)),
        }
        i += 2;
    }
    options
}

fn main() {
    if std::env::args().skip(1).any(|arg| arg == "--encode-lag") {
        std::process::exit(hdr::encode_stdin((LAG_INTERVAL_S * 1000.0).round() as u64));
    }
    let options = parse_args();
    let mut builder = if options.cores > 1 && options.measure_tasks.is_none() {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(options.cores);
        builder
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    let runtime = builder
        .enable_all()
        .max_blocking_threads(contract::OFFLOAD_THREADS)
        .build()
        .unwrap_or_else(|e| fail(&format!("cannot start the tokio runtime: {}", e)));
    let code = match options.measure_tasks {
        Some(n) => runtime.block_on(measure_tasks(n, options.depth)),
        None if options.bare => runtime.block_on(bare::serve(&options.host, options.port)),
        None => runtime.block_on(serve(options)),
    };
    // Without waiting for blocking-pool threads still sleeping (the drain deadline passed).
    let _ = std::io::stdout().flush();
    std::process::exit(code);
}

async fn serve(options: Options) -> i32 {
    let address = match (options.host.as_str(), options.port).to_socket_addrs() {
        Ok(mut addresses) => match addresses.next() {
            Some(address) => address,
            None => fail(&format!("cannot resolve host {:?}", options.host)),
        },
        Err(e) => fail(&format!("cannot resolve host {:?}: {}", options.host, e)),
    };
    let socket = if address.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }
        .unwrap_or_else(|e| fail(&format!("cannot open a socket: {}", e)));
    let _ = socket.set_reuseaddr(true);
    if let Err(e) = socket.bind(address) {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            fail(&format!(
                "port {} on {} is already in use; stop what holds it or pick another with --port",
                options.port, options.host
            ));
        }
        fail(&format!("cannot listen on {}:{}: {}", options.host, options.port, e));
    }
    let listener = socket
        .listen(LISTEN_BACKLOG)
        .unwrap_or_else(|e| fail(&format!("cannot listen on {}:{}: {}", options.host, options.port, e)));
    let live = Arc::new(Live::default());
    let info = Info {
        impl_name: options.impl_name.clone(),
        runtime: "tokio",
        runtime_version: TOKIO_VERSION,
        http_stack: Box::leak(format!("hyper {}", HYPER_VERSION).into_boxed_str()),
        http_client: Box::leak(format!("hyper {}", HYPER_VERSION).into_boxed_str()),
    };
    let telemetry = Telemetry::new(&info, options.metrics, live.clone(), options.max_connections.max(0) as u64);
    let upstream = options.upstream.as_ref().map(|url| {
        Upstream::new(url.clone(), options.upstream_pool, options.upstream_timeout.clone())
            .unwrap_or_else(|e| fail(&e))
    });
    let app = Arc::new(App {
        impl_name: options.impl_name.clone(),
        impl_header: server::impl_header(&options.impl_name),
        telemetry,
        live: live.clone(),
        upstream,
        timeouts: Timeouts {
            idle: Duration::from_secs_f64(options.idle_timeout),
            header: Duration::from_secs_f64(options.header_timeout),
        },
        max_connections: options.max_connections,
    });
    let mut terminate = signal(SignalKind::terminate()).unwrap_or_else(|e| fail(&e.to_string()));
    let mut interrupt = signal(SignalKind::interrupt()).unwrap_or_else(|e| fail(&e.to_string()));
    if app.telemetry.enabled() {
        // The lag monitor's first tick is in before the server says it is up: a scrape right
        // after the announce line already has a lag sample.
        let (first_tick, ticked) = tokio::sync::oneshot::channel::<()>();
        let app = app.clone();
        tokio::spawn(async move {
            let _task = TaskGuard::new(&app.live);
            let mut first_tick = Some(first_tick);
            loop {
                let armed = Instant::now();
                tokio::time::sleep(Duration::from_secs_f64(LAG_INTERVAL_S)).await;
                let lag = armed.elapsed().as_secs_f64() - LAG_INTERVAL_S;
                app.telemetry.observe_lag(lag.max(0.0));
                if let Some(first_tick) = first_tick.take() {
                    let _ = first_tick.send(());
                }
            }
        });
        let _ = ticked.await;
    }
    let (drain_tx, drain_rx) = watch::channel(false);
    let local = listener.local_addr().unwrap_or(address);
    let shown = if local.is_ipv6() { format!("[{}]", local.ip()) } else { local.ip().to_string() };
    println!("stackbench {} listening on http://{}:{}", options.impl_name, shown, local.port());
    let _ = std::io::stdout().flush();
    // The accept loop runs in this (the main) future: it ends, and the listener closes, on
    // the first SIGTERM or SIGINT.
    let _accepting = TaskGuard::new(&live);
    loop {
        tokio::select! {
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    app.telemetry.connection_accepted();
                    if live.connections.load(Ordering::Relaxed) >= app.max_connections {
                        tokio::spawn(server::shed(app.clone(), stream));
                    } else {
                        live.connections.fetch_add(1, Ordering::Relaxed);
                        tokio::spawn(server::connection(app.clone(), stream, drain_rx.clone()));
                    }
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await, // EMFILE and the like
            },
        }
    }
    drop(listener);
    let _ = drain_tx.send(true);
    let deadline = Instant::now() + Duration::from_secs_f64(options.drain_timeout);
    while live.connections.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    0
}

/// RSS in bytes, from /proc/self/statm.
fn rss() -> i64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: i64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as i64
}

type Parked = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// `depth` nested calls, then park until released. An async fn cannot call itself without a
/// box (its future would contain itself): each level is one heap allocation, as recursion
/// costs in Rust's stackless model.
fn nest(depth: usize, mut release: watch::Receiver<bool>, parked: Arc<AtomicUsize>) -> Parked {
    Box::pin(async move {
        if depth == 0 {
            parked.fetch_add(1, Ordering::Relaxed);
            while !*release.borrow() {
                if release.changed().await.is_err() {
                    break;
                }
            }
        } else {
            nest(depth - 1, release, parked).await
        }
    })
}

const SWITCHES: usize = 20_000;

/// `stackbench tasks`' figures for a tokio task, measured as _measure_asyncio measures an
/// asyncio task: RSS growth with N parked tasks, the time to spawn them until all are parked,
/// and the time per switch between two tasks that yield to each other.
async fn measure_tasks(n: usize, depth: usize) -> i32 {
    let (release, receiver) = watch::channel(false);
    let parked = Arc::new(AtomicUsize::new(0));
    let before = rss();
    let started = Instant::now();
    let mut handles = Vec::with_capacity(n);
    for _ in 0..n {
        handles.push(tokio::spawn(nest(depth, receiver.clone(), parked.clone())));
    }
    while parked.load(Ordering::Relaxed) < n {
        tokio::task::yield_now().await;
    }
    let spawn = started.elapsed().as_secs_f64();
    let after = rss();
    let _ = release.send(true);
    for handle in handles {
        let _ = handle.await;
    }
    let ping = || {
        tokio::spawn(async {
            for _ in 0..SWITCHES / 2 {
                tokio::task::yield_now().await;
            }
        })
    };
    let started = Instant::now();
    let (a, b) = (ping(), ping());
    let _ = a.await;
    let _ = b.await;
    let switch = started.elapsed().as_secs_f64() / SWITCHES as f64;
    println!("{{\"rss_delta\": {}, \"spawn\": {}, \"switch\": {}}}", after - before, spawn, switch);
    0
}
