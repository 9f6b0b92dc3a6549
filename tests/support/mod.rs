//! Running the real `sandboxd` binary for end-to-end tests: a config of its own (its own
//! Redis key prefix or data directory, a free port), start, wait for /health, SIGKILL, restart.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const SECRET: &str = "end-to-end-test-secret-0123456789";

pub fn redis_url() -> String {
    std::env::var("SANDBOXD_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Daemon {
    pub config: PathBuf,
    pub base: String,
    pub child: Option<Child>,
    pub log: PathBuf,
}

/// Write a config for a test daemon. `store` is "redis" (with a unique prefix) or "embedded".
pub fn write_config(
    dir: &Path,
    store: &str,
    prefix: &str,
    accounts: usize,
    extra: &str,
) -> (PathBuf, String) {
    let port = free_port();
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
[store]
kind = "{store}"
data_dir = "{data}"
redis_url = "{redis}"
key_prefix = "{prefix}"
[sim]
accounts = {accounts}
unregistered = 1
cleanup_seconds = 0.05
dollars_per_hour = 0.0
[auth]
jwt_secret = "{SECRET}"
[engine]
timer_tick_ms = 20
outbox_tick_ms = 20
cleanup_poll_seconds = 1
spend_sweep_seconds = 0
[log]
filter = "warn"
[global.cleanup]
waitBeforeRerunSuccessfulAttemptSeconds = 0
waitBeforeRetryFailedAttemptSeconds = 0
{extra}
"#,
        data = dir.join("data").display(),
        redis = redis_url(),
    );
    let path = dir.join("sandboxd.toml");
    std::fs::write(&path, text).unwrap();
    (path, format!("http://127.0.0.1:{port}"))
}

impl Daemon {
    pub fn new(config: PathBuf, base: String) -> Self {
        let log = config.with_extension("log");
        Self {
            config,
            base,
            child: None,
            log,
        }
    }

    pub async fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_sandboxd"))
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("the sandboxd binary starts");
        self.child = Some(child);
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(response) = client.get(format!("{}/health", self.base)).send().await {
                if response.status().is_success() {
                    return;
                }
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "sandboxd exited early ({status}); log:\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "sandboxd did not become healthy; log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        child.wait().unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn token(config: &Path, email: &str, role: &str) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_sandboxd"))
        .args(["token", "--email", email, "--role", role, "--config"])
        .arg(config)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

pub struct Api {
    pub base: String,
    pub token: String,
    pub client: reqwest::Client,
}

impl Api {
    pub fn new(base: &str, token: String) -> Self {
        Self {
            base: base.to_string(),
            token,
            client: reqwest::Client::new(),
        }
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), reqwest::Error> {
        let mut request = self
            .client
            .request(method, format!("{}{}", self.base, path))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let value = response.json::<Value>().await.unwrap_or(Value::Null);
        Ok((status, value))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None)
            .await
            .expect("GET answers")
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body))
            .await
            .expect("POST answers")
    }

    /// Every item of a paginated list.
    pub async fn list_all(&self, path: &str) -> Vec<Value> {
        let mut items = Vec::new();
        let mut page: Option<String> = None;
        loop {
            let separator = if path.contains('?') { '&' } else { '?' };
            let url = match &page {
                Some(cursor) => format!(
                    "{path}{separator}pageSize=250&pageIdentifier={}",
                    urlencode(cursor)
                ),
                None => format!("{path}{separator}pageSize=250"),
            };
            let (status, body) = self.get(&url).await;
            assert_eq!(status, 200, "{url}: {body}");
            items.extend(
                body["data"]["result"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default(),
            );
            match body["data"]["nextPageIdentifier"].as_str() {
                Some(next) => page = Some(next.to_string()),
                None => return items,
            }
        }
    }

    /// Wait until `count` accounts are Available.
    pub async fn wait_available(&self, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let available = self.list_all("/accounts?status=Available").await.len();
            if available >= count {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "only {available} of {count} accounts became Available"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

pub fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}
