//! The versions of tokio and hyper this build resolved (stackbench_server_info's
//! runtime_version and http_stack), read from the Cargo.lock cargo has just written.

use std::path::Path;

fn version_of(lock: &str, name: &str) -> String {
    let marker = format!("name = \"{}\"\nversion = \"", name);
    lock.find(&marker)
        .map(|at| {
            let rest = &lock[at + marker.len()..];
            rest[..rest.find('"').unwrap_or(0)].to_string()
        })
        .unwrap_or_else(|| "unknown".to_string())
}

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    let lock = std::fs::read_to_string(Path::new(&dir).join("Cargo.lock")).unwrap_or_default();
    println!("cargo:rustc-env=STACKBENCH_TOKIO_VERSION={}", version_of(&lock, "tokio"));
    println!("cargo:rustc-env=STACKBENCH_HYPER_VERSION={}", version_of(&lock, "hyper"));
    println!("cargo:rerun-if-changed=Cargo.lock");
}
