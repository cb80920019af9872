//! `GET /upstream`: K concurrent `GET {upstream}/sleep?ms=N` through hyper's own pooled client
//! (servers/upstream/__init__.py has the settings and faults every server shares).
//!
//! hyper 0.14's Client has no cap on connections per host: a call that finds no idle pooled
//! connection opens another. The cap is a Semaphore of --upstream-pool permits, held from
//! before the call until its body has been read to the end (hyper puts the connection back in
//! its pool before it reports that end), with pool_max_idle_per_host equal to it: a call
//! beyond the pool waits for a permit and the pool never grows. One deadline
//! (--upstream-timeout) covers the request's calls, waiting for permits included. hyper's
//! client never resends a request by itself once `retry_canceled_requests` is off.

use std::sync::Arc;
use std::time::Duration;

use hyper::client::HttpConnector;
use hyper::{Client, Uri};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::contract::{self, Response};
use crate::metrics::Live;
use crate::server::TaskGuard;

pub const KEEPALIVE: Duration = Duration::from_secs(30);

pub struct Upstream {
    client: Client<HttpConnector>,
    url: String,
    timeout: Duration,
    timeout_text: String,
    permits: Arc<Semaphore>,
}

impl Upstream {
    pub fn new(url: String, pool: usize, timeout_text: String) -> Result<Upstream, String> {
        let seconds: f64 = timeout_text
            .parse()
            .ok()
            .filter(|s: &f64| *s > 0.0 && s.is_finite())
            .ok_or_else(|| format!("--upstream-timeout {:?} is not a number of seconds", timeout_text))?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder()
            .pool_max_idle_per_host(pool)
            .pool_idle_timeout(KEEPALIVE)
            .retry_canceled_requests(false)
            .build(connector);
        Ok(Upstream {
            client,
            url,
            timeout: Duration::from_secs_f64(seconds),
            timeout_text,
            permits: Arc::new(Semaphore::new(pool)),
        })
    }

    fn unreachable(&self, why: &str) -> Response {
        let why: String = why.chars().take(200).collect();
        contract::error(502, &format!("upstream {} unreachable: {}", self.url, why))
    }

    /// The calls, structured: the first failure, the deadline, or this future being dropped
    /// (the client left) drops the JoinSet, which aborts every call still running.
    pub async fn call_all(&self, calls: u64, ms: u64, live: &Arc<Live>) -> Response {
        let uri: Uri = match format!("{}/sleep?ms={}", self.url, ms).parse() {
            Ok(uri) => uri,
            Err(e) => return self.unreachable(&e.to_string()),
        };
        let mut set = JoinSet::new();
        for index in 0..calls as usize {
            let client = self.client.clone();
            let uri = uri.clone();
            let permits = self.permits.clone();
            let guard = TaskGuard::new(live);
            set.spawn(async move {
                let _guard = guard;
                let _permit = permits.acquire_owned().await.map_err(|e| e.to_string())?;
                let response = client.get(uri).await.map_err(|e| reason(&e))?;
                let status = response.status().as_u16();
                hyper::body::to_bytes(response.into_body()).await.map_err(|e| reason(&e))?;
                Ok::<(usize, u16), String>((index, status))
            });
        }
        let collect = async {
            let mut statuses = vec![0u16; calls as usize];
            while let Some(joined) = set.join_next().await {
                match joined {
                    Ok(Ok((index, status))) => statuses[index] = status,
                    Ok(Err(why)) => return Err(why),
                    Err(e) => return Err(e.to_string()),
                }
            }
            Ok(statuses)
        };
        match tokio::time::timeout(self.timeout, collect).await {
            Err(_) => contract::error(
                504,
                &format!("upstream {} did not answer within {} s", self.url, self.timeout_text),
            ),
            Ok(Err(why)) => self.unreachable(&why),
            Ok(Ok(statuses)) => contract::upstream_response(calls, &statuses),
        }
    }
}

/// Why a call failed, in a few words: "connection refused" wherever it sits in the causes.
fn reason(error: &hyper::Error) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return "connection refused".to_string();
            }
        }
        source = cause.source();
    }
    let text = error.to_string();
    if text.is_empty() {
        "hyper::Error".to_string()
    } else {
        text
    }
}
