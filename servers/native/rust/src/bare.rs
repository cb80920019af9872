//! `--bare`: the best case rust-hyper is compared with (benchmarks/launch.py), as pywsgi is
//! gevent's: hyper on the same tokio runtime, one service answering "Hello, World!", and
//! nothing of stackbench's (no head gate, no telemetry, no contract).

use std::convert::Infallible;
use std::io::Write;
use std::net::ToSocketAddrs;

use hyper::service::{make_service_fn, service_fn};
use hyper::{Body, Request, Response, Server};
use tokio::signal::unix::{signal, SignalKind};

async fn hello(_: Request<Body>) -> Result<Response<Body>, Infallible> {
    Ok(Response::builder()
        .header("Content-Type", "text/plain; charset=utf-8")
        .body(Body::from("Hello, World!"))
        .expect("a static response"))
}

pub async fn serve(host: &str, port: u16) -> i32 {
    let address = match (host, port).to_socket_addrs().ok().and_then(|mut a| a.next()) {
        Some(address) => address,
        None => crate::fail(&format!("cannot resolve host {:?}", host)),
    };
    let builder = match Server::try_bind(&address) {
        Ok(builder) => builder,
        Err(e) => crate::fail(&format!("cannot listen on {}:{}: {}", host, port, e)),
    };
    let make = make_service_fn(|_| async { Ok::<_, Infallible>(service_fn(hello)) });
    let server = builder.tcp_nodelay(true).serve(make);
    println!("bare rust_hyper listening on http://{}", server.local_addr());
    let _ = std::io::stdout().flush();
    let mut terminate = signal(SignalKind::terminate()).unwrap_or_else(|e| crate::fail(&e.to_string()));
    let mut interrupt = signal(SignalKind::interrupt()).unwrap_or_else(|e| crate::fail(&e.to_string()));
    let stopped = async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    };
    match server.with_graceful_shutdown(stopped).await {
        Ok(()) => 0,
        Err(e) => crate::fail(&format!("serving: {}", e)),
    }
}
