//! The metrics of servers/telemetry.py, with the same names, labels and buckets, through the
//! Rust Prometheus client (the `prometheus` crate, TiKV's, which prometheus.io lists as Rust's).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use crate::contract::{self, Response};
use crate::hdr::LagHistogram;

const R20: [f64; 20] = [
    1.0, 1.12, 1.25, 1.4, 1.6, 1.8, 2.0, 2.24, 2.5, 2.8, 3.15, 3.55, 4.0, 4.5, 5.0, 5.6, 6.3, 7.1,
    8.0, 9.0,
];
pub const LAG_INTERVAL_S: f64 = 0.010;
pub const CLIENT_CLOSED_STATUS: u16 = 499;

/// telemetry.LATENCY_BUCKETS: 0.5 ms, the R20 series from 1 ms to 90 s, then 60, 100, 120 s.
pub fn latency_buckets() -> Vec<f64> {
    let mut buckets = vec![0.0005, 60.0, 100.0, 120.0];
    for exponent in -3..=1 {
        for m in R20 {
            // round(m * 10**e, 6), as Python computes it
            buckets.push((m * 10f64.powi(exponent) * 1e6).round() / 1e6);
        }
    }
    buckets.sort_by(|a, b| a.partial_cmp(b).unwrap());
    buckets.dedup();
    buckets
}

/// telemetry.LAG_BUCKETS: the R20 series from 0.1 ms to 90 s, then 100 s.
pub fn lag_buckets() -> Vec<f64> {
    let mut buckets = vec![100.0];
    for exponent in -4..=1 {
        for m in R20 {
            // round(m * 10**e, 7), as Python computes it
            buckets.push((m * 10f64.powi(exponent) * 1e7).round() / 1e7);
        }
    }
    buckets.sort_by(|a, b| a.partial_cmp(b).unwrap());
    buckets.dedup();
    buckets
}

pub struct Info {
    pub impl_name: String,
    pub runtime: &'static str,
    pub runtime_version: &'static str,
    pub http_stack: &'static str,
    pub http_client: &'static str,
}

/// What the server counts itself and reads at scrape time.
#[derive(Default)]
pub struct Live {
    pub tasks: AtomicI64,
    pub connections: AtomicI64,
}

pub struct Metrics {
    registry: Registry,
    duration: HistogramVec,
    /// The request histogram's children, by their labels: with_label_values would format the
    /// status, hash the three labels and take the vector's lock for every request.
    children: Mutex<HashMap<(&'static str, &'static str, u16), Histogram, BuildHasherDefault<Fnv>>>,
    active: IntGauge,
    lag: Histogram,
    exact_lag: LagHistogram, // every tick, for /lag (hdr.rs)
    open_connections: Gauge,
    accepted: IntCounter,
    rejected: IntCounter,
    tasks: Gauge,
    live: Arc<Live>,
}

/// FNV-1a, for the children's keys: a few bytes of the contract's own labels (no client
/// chooses them), which SipHash, the default and keyed against flooding, costs several times
/// more to hash.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

pub struct Telemetry {
    metrics: Option<Metrics>,
    pub live: Arc<Live>,
}

impl Telemetry {
    pub fn new(info: &Info, enabled: bool, live: Arc<Live>, max_connections: u64) -> Telemetry {
        if !enabled {
            return Telemetry { metrics: None, live };
        }
        let registry = Registry::new();
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "http_server_request_duration_seconds",
                "Time from a request's arrival to the last byte of its response.",
            )
            .buckets(latency_buckets()),
            &["route", "method", "status"],
        )
        .unwrap();
        let active = IntGauge::new("http_server_active_requests", "Requests being handled right now.").unwrap();
        let lag = Histogram::with_opts(
            HistogramOpts::new(
                "stackbench_scheduler_lag_seconds",
                "How late a periodic 10 ms timer fires in the runtime.",
            )
            .buckets(lag_buckets()),
        )
        .unwrap();
        let open_connections =
            Gauge::new("http_server_open_connections", "Client connections open right now.").unwrap();
        let limit = Gauge::new(
            "http_server_connection_limit",
            "Open connections allowed; past it new ones get a 503 and are closed.",
        )
        .unwrap();
        limit.set(max_connections as f64);
        let accepted = IntCounter::new(
            "http_server_connections_total",
            "Client connections accepted since the server started (shed ones included).",
        )
        .unwrap();
        let rejected = IntCounter::new(
            "http_server_rejected_connections_total",
            "Connections shed because the server was at its connection limit.",
        )
        .unwrap();
        let tasks = Gauge::new(
            "stackbench_tasks",
            "Live tasks (trio, asyncio, tokio: those the server spawned) or greenlets (gevent) in the server's runtime.",
        )
        .unwrap();
        let server_info = IntGaugeVec::new(
            Opts::new("stackbench_server_info", "Which implementation, runtime and HTTP stack this server is."),
            &["impl", "runtime", "runtime_version", "http_stack", "http_client", "python_version"],
        )
        .unwrap();
        server_info
            .with_label_values(&[
                &info.impl_name,
                info.runtime,
                info.runtime_version,
                info.http_stack,
                info.http_client,
                "",
            ])
            .set(1);
        let collectors: Vec<Box<dyn Collector>> = vec![
            Box::new(duration.clone()),
            Box::new(active.clone()),
            Box::new(lag.clone()),
            Box::new(open_connections.clone()),
            Box::new(limit),
            Box::new(accepted.clone()),
            Box::new(rejected.clone()),
            Box::new(tasks.clone()),
            Box::new(server_info),
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
        ];
        for collector in collectors {
            registry.register(collector).unwrap();
        }
        let metrics = Metrics {
            registry,
            duration,
            children: Mutex::new(HashMap::default()),
            active,
            lag,
            exact_lag: LagHistogram::default(),
            open_connections,
            accepted,
            rejected,
            tasks,
            live: live.clone(),
        };
        Telemetry { metrics: Some(metrics), live }
    }

    pub fn enabled(&self) -> bool {
        self.metrics.is_some()
    }

    pub fn connection_accepted(&self) {
        if let Some(m) = &self.metrics {
            m.accepted.inc();
        }
    }

    pub fn connection_rejected(&self) {
        if let Some(m) = &self.metrics {
            m.rejected.inc();
        }
    }

    pub fn request_started(&self) -> Instant {
        if let Some(m) = &self.metrics {
            m.active.inc();
        }
        Instant::now()
    }

    pub fn request_finished(&self, route: &'static str, method: &'static str, status: u16, started: Instant) {
        if let Some(m) = &self.metrics {
            m.active.dec();
            let method = contract::method_label(method);
            let seconds = started.elapsed().as_secs_f64();
            let mut children = m.children.lock().unwrap();
            children
                .entry((route, method, status))
                .or_insert_with(|| m.duration.with_label_values(&[route, method, &status.to_string()]))
                .observe(seconds);
        }
    }

    pub fn observe_lag(&self, seconds: f64) {
        if let Some(m) = &self.metrics {
            m.lag.observe(seconds);
            m.exact_lag.record(Duration::from_secs_f64(seconds));
        }
    }

    /// GET /lag: every lag tick since start, HdrHistogram-encoded (hdr.rs).
    pub fn lag(&self) -> Response {
        match &self.metrics {
            Some(m) => Response::json(200, m.exact_lag.body((LAG_INTERVAL_S * 1000.0).round() as u64)),
            None => contract::error(404, "metrics are switched off (--no-metrics)"),
        }
    }

    pub fn exposition(&self) -> Response {
        let m = match &self.metrics {
            Some(m) => m,
            None => return contract::error(404, "metrics are switched off (--no-metrics)"),
        };
        m.tasks.set(m.live.tasks.load(Ordering::Relaxed) as f64);
        m.open_connections.set(m.live.connections.load(Ordering::Relaxed) as f64);
        let encoder = TextEncoder::new();
        let mut text = Vec::new();
        let mut families = m.registry.gather();
        precise_cpu_seconds(&mut families);
        encoder.encode(&families, &mut text).unwrap();
        Response::new(200, go_floats(&String::from_utf8_lossy(&text)), prometheus::TEXT_FORMAT)
    }
}

/// prometheus 0.13's ProcessCollector keeps process_cpu_seconds_total in an IntCounter, so
/// it counts whole seconds (a minute of light work still reads 0). `stackbench run --target`
/// and the dashboards' CPU panels read it: set it to the process's CPU time (user + system)
/// to the microsecond, as getrusage has it, as the Python and Go servers report theirs.
fn precise_cpu_seconds(families: &mut [prometheus::proto::MetricFamily]) {
    let family = match families.iter_mut().find(|f| f.get_name() == "process_cpu_seconds_total") {
        Some(family) => family,
        None => return,
    };
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; RUSAGE_SELF is always valid.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) } != 0 {
        return;
    }
    // SAFETY: getrusage returned 0, so it wrote the whole struct (it was zeroed anyway).
    let usage = unsafe { usage.assume_init() };
    let micros = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let seconds = micros(usage.ru_utime) + micros(usage.ru_stime);
    for metric in family.mut_metric().iter_mut() {
        let mut counter = prometheus::proto::Counter::default();
        counter.set_value(seconds);
        metric.set_counter(counter);
    }
}

/// Bucket bounds as prometheus_client (and Go) print them: `le="1.0"`, where Rust's float
/// formatting writes `le="1"`, so that every server's series have the same labels.
fn go_floats(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 256);
    let mut rest = text;
    while let Some(at) = rest.find("le=\"") {
        let (before, after) = rest.split_at(at + 4);
        out.push_str(before);
        let end = after.find('"').unwrap_or(after.len());
        let value = &after[..end];
        out.push_str(value);
        if value.bytes().all(|b| b.is_ascii_digit()) && !value.is_empty() {
            out.push_str(".0");
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}
