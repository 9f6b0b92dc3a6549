//! `sandboxd bench --quick` runs the whole pipeline on small sizes and prints its figures.
//!
//! The Redis run uses `SANDBOXD_TEST_REDIS_URL` (default redis://127.0.0.1:6379) when it
//! answers; `SANDBOXD_SKIP_REDIS_TESTS=1` skips it.

use std::net::{TcpStream, ToSocketAddrs};
use std::process::Command;
use std::time::Duration;

fn quick_bench(store: &str, redis_url: Option<&str>) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sandboxd"));
    command.args(["bench", "--quick", "--store", store]);
    if let Some(url) = redis_url {
        command.args(["--redis-url", url]);
    }
    let output = command.output().expect("the sandboxd binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "bench --store {store} exited with {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    assert!(
        stdout.contains("requests/s"),
        "no throughput figure:\n{stdout}"
    );
    assert!(
        stdout.contains("invariants OK"),
        "invariants not OK:\n{stdout}"
    );
}

/// The Redis URL to test against, if one answers.
fn redis_url() -> Option<String> {
    if std::env::var("SANDBOXD_SKIP_REDIS_TESTS").is_ok_and(|value| value == "1") {
        return None;
    }
    let explicit = std::env::var("SANDBOXD_TEST_REDIS_URL").ok();
    let url = explicit
        .clone()
        .unwrap_or_else(|| "redis://127.0.0.1:6379".to_string());
    if explicit.is_some() {
        return Some(url);
    }
    let reachable = ("127.0.0.1", 6379)
        .to_socket_addrs()
        .ok()
        .and_then(|mut addresses| addresses.next())
        .is_some_and(|address| {
            TcpStream::connect_timeout(&address, Duration::from_millis(500)).is_ok()
        });
    reachable.then_some(url)
}

#[test]
fn quick_bench_on_the_embedded_store() {
    quick_bench("embedded", None);
}

#[test]
fn quick_bench_on_redis_when_available() {
    match redis_url() {
        Some(url) => quick_bench("redis", Some(&url)),
        None => eprintln!("no Redis answers; skipping the Redis bench"),
    }
}
