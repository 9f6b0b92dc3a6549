//! Settings: config/default.toml (compiled in), merged with an optional --config file, then
//! SANDBOXD_<SECTION>__<KEY> environment overrides, then one validation step into typed
//! settings. Every error names the key.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _};
use sandboxd_actors::domain::GlobalConfig;
use serde::Deserialize;

pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");
const ENV_PREFIX: &str = "SANDBOXD_";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub store: StoreSettings,
    pub aws: AwsSettings,
    pub events: EventSettings,
    pub sim: SimSettings,
    pub auth: AuthSettings,
    pub engine: EngineTuning,
    pub accounts: ProtectedAccounts,
    pub log: LogSettings,
    pub global: GlobalConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub listen: String,
    pub workers: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    Embedded,
    Redis,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSettings {
    pub kind: StoreKind,
    pub data_dir: PathBuf,
    pub redis_url: String,
    pub key_prefix: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AwsMode {
    Simulated,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsSettings {
    pub mode: AwsMode,
    pub region: String,
    pub endpoint_url: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventSink {
    Log,
    EventBridge,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventSettings {
    pub sink: EventSink,
    pub bus_name: String,
    pub source: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimSettings {
    pub accounts: usize,
    pub unregistered: usize,
    pub cleanup_seconds: f64,
    pub cleanup_failure_rate: f64,
    pub dollars_per_hour: f64,
    pub clock_speed: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    pub jwt_secret: String,
    pub jwt_secret_file: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineTuning {
    pub arbiters: usize,
    pub mailbox_capacity: usize,
    pub timer_tick_ms: u64,
    pub outbox_tick_ms: u64,
    pub spend_sweep_seconds: u64,
    pub cleanup_poll_seconds: u64,
    pub cleanup_run_timeout_minutes: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProtectedAccounts {
    pub hub_account_id: String,
    pub org_management_account_id: String,
    pub identity_center_account_id: String,
    pub blocklist: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: String,
    pub filter: String,
}

impl ProtectedAccounts {
    pub fn all(&self) -> HashSet<String> {
        [
            &self.hub_account_id,
            &self.org_management_account_id,
            &self.identity_center_account_id,
        ]
        .into_iter()
        .chain(self.blocklist.iter())
        .filter(|id| !id.is_empty())
        .cloned()
        .collect()
    }
}

/// Deep-merge `overlay` into `base` (tables merge, everything else replaces).
fn merge(base: &mut toml::Table, overlay: toml::Table) {
    for (key, value) in overlay {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(existing)), toml::Value::Table(incoming)) => {
                merge(existing, incoming)
            }
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// Parse an environment value as TOML (numbers, booleans, arrays), else take it as a string.
fn env_value(raw: &str) -> toml::Value {
    let parsed: Result<toml::Table, _> = toml::from_str(&format!("v = {raw}"));
    match parsed.ok().and_then(|mut table| table.remove("v")) {
        Some(value) => value,
        None => toml::Value::String(raw.to_string()),
    }
}

/// Apply SANDBOXD_A__B__C=value onto the table; the path must name an existing key
/// (case-insensitive), so a typo is an error rather than silently ignored.
fn apply_env(
    table: &mut toml::Table,
    variables: impl Iterator<Item = (String, String)>,
) -> anyhow::Result<()> {
    for (name, raw) in variables {
        // Only SANDBOXD_<SECTION>__<KEY> names are overrides; other SANDBOXD_ variables (the
        // test scripts' SANDBOXD_TEST_REDIS_URL, say) are not configuration.
        let Some(path) = name
            .strip_prefix(ENV_PREFIX)
            .filter(|path| path.contains("__"))
        else {
            continue;
        };
        let segments: Vec<&str> = path.split("__").collect();
        let mut cursor = &mut *table;
        let mut dotted = Vec::new();
        for (index, segment) in segments.iter().enumerate() {
            let key = cursor
                .keys()
                .find(|key| key.eq_ignore_ascii_case(segment))
                .cloned()
                .ok_or_else(|| {
                    anyhow!(
                        "environment variable {name}: unknown config key '{}'",
                        [dotted.join("."), segment.to_lowercase()]
                            .iter()
                            .filter(|part| !part.is_empty())
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(".")
                    )
                })?;
            dotted.push(key.clone());
            if index + 1 == segments.len() {
                cursor.insert(key, env_value(&raw));
            } else {
                cursor = match cursor.get_mut(&key) {
                    Some(toml::Value::Table(inner)) => inner,
                    _ => bail!(
                        "environment variable {name}: '{}' is not a section",
                        dotted.join(".")
                    ),
                };
            }
        }
    }
    Ok(())
}

impl Settings {
    /// Load the settings: defaults, then `file`, then the environment, then validate.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Settings> {
        Self::load_with_env(file, std::env::vars())
    }

    pub fn load_with_env(
        file: Option<&Path>,
        variables: impl Iterator<Item = (String, String)>,
    ) -> anyhow::Result<Settings> {
        let mut table: toml::Table =
            toml::from_str(DEFAULT_TOML).context("built-in config/default.toml")?;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading config file {}", path.display()))?;
            let overlay: toml::Table = toml::from_str(&text)
                .map_err(|error| anyhow!("config file {}: {error}", path.display()))?;
            merge(&mut table, overlay);
        }
        apply_env(&mut table, variables)?;
        let settings: Settings = toml::Value::Table(table)
            .try_into()
            .map_err(|error: toml::de::Error| anyhow!("configuration: {error}"))?;
        settings.validate()?;
        Ok(settings)
    }

    /// One validation step; the error names the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.server.listen.parse::<std::net::SocketAddr>().is_err() {
            bail!(
                "server.listen: '{}' is not an address like 127.0.0.1:8080",
                self.server.listen
            );
        }
        if self.server.workers == 0 {
            bail!("server.workers: must be >= 1");
        }
        if self.store.kind == StoreKind::Redis && !self.store.redis_url.starts_with("redis") {
            bail!(
                "store.redis_url: '{}' must start with redis:// or rediss://",
                self.store.redis_url
            );
        }
        if self.store.key_prefix.is_empty() || self.store.key_prefix.contains(char::is_whitespace) {
            bail!("store.key_prefix: must be non-empty with no spaces");
        }
        if self.sim.accounts > 100_000 {
            bail!("sim.accounts: at most 100000");
        }
        if !(0.0..=1.0).contains(&self.sim.cleanup_failure_rate) {
            bail!("sim.cleanup_failure_rate: must be between 0 and 1");
        }
        if !(self.sim.cleanup_seconds >= 0.0 && self.sim.cleanup_seconds.is_finite()) {
            bail!("sim.cleanup_seconds: must be >= 0");
        }
        if !(self.sim.dollars_per_hour >= 0.0 && self.sim.dollars_per_hour.is_finite()) {
            bail!("sim.dollars_per_hour: must be >= 0");
        }
        if !(self.sim.clock_speed >= 1.0 && self.sim.clock_speed.is_finite()) {
            bail!("sim.clock_speed: must be >= 1");
        }
        if self.engine.arbiters == 0 {
            bail!("engine.arbiters: must be >= 1");
        }
        if self.engine.mailbox_capacity == 0 {
            bail!("engine.mailbox_capacity: must be >= 1");
        }
        if self.engine.timer_tick_ms == 0 || self.engine.outbox_tick_ms == 0 {
            bail!("engine.timer_tick_ms and engine.outbox_tick_ms: must be >= 1");
        }
        if self.engine.cleanup_poll_seconds == 0 {
            bail!("engine.cleanup_poll_seconds: must be >= 1");
        }
        if self.engine.cleanup_run_timeout_minutes == 0 {
            bail!("engine.cleanup_run_timeout_minutes: must be >= 1");
        }
        let all_ids = [
            ("accounts.hub_account_id", &self.accounts.hub_account_id),
            (
                "accounts.org_management_account_id",
                &self.accounts.org_management_account_id,
            ),
            (
                "accounts.identity_center_account_id",
                &self.accounts.identity_center_account_id,
            ),
        ];
        for (key, id) in all_ids {
            if !id.is_empty() && !sandboxd_actors::domain::account::is_account_id(id) {
                bail!("{key}: '{id}' is not a 12-digit account id");
            }
        }
        if let Some(bad) = self
            .accounts
            .blocklist
            .iter()
            .find(|id| !sandboxd_actors::domain::account::is_account_id(id))
        {
            bail!("accounts.blocklist: '{bad}' is not a 12-digit account id");
        }
        if self.aws.region.trim().is_empty() {
            bail!("aws.region: must not be empty");
        }
        if !self.aws.endpoint_url.is_empty() && !self.aws.endpoint_url.starts_with("http") {
            bail!(
                "aws.endpoint_url: '{}' must be an http(s) URL or empty",
                self.aws.endpoint_url
            );
        }
        if self.events.sink == EventSink::EventBridge {
            if self.events.bus_name.trim().is_empty() {
                bail!("events.bus_name: required when events.sink = \"eventbridge\"");
            }
            if self.events.source.trim().is_empty() {
                bail!("events.source: required when events.sink = \"eventbridge\"");
            }
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            bail!("log.format: must be \"text\" or \"json\"");
        }
        self.global
            .validate()
            .map_err(|error| anyhow!("global.{error}"))?;
        Ok(())
    }

    pub fn engine_settings(&self) -> sandboxd_actors::engine::EngineSettings {
        let engine = &self.engine;
        sandboxd_actors::engine::EngineSettings {
            arbiters: engine.arbiters,
            mailbox_capacity: engine.mailbox_capacity,
            timer_tick: std::time::Duration::from_millis(engine.timer_tick_ms),
            outbox_tick: std::time::Duration::from_millis(engine.outbox_tick_ms),
            spend_sweep_interval: chrono::Duration::seconds(engine.spend_sweep_seconds as i64),
            cleanup_poll_interval: chrono::Duration::seconds(engine.cleanup_poll_seconds as i64),
            cleanup_run_timeout: chrono::Duration::minutes(
                engine.cleanup_run_timeout_minutes as i64,
            ),
            protected_accounts: self.accounts.all(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(file_text: Option<&str>, env: &[(&str, &str)]) -> anyhow::Result<Settings> {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("config.toml");
        if let Some(text) = file_text {
            std::fs::write(&path, text).unwrap();
        }
        let variables = env
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()));
        Settings::load_with_env(
            file_text.map(|_| path.as_path()),
            variables.collect::<Vec<_>>().into_iter(),
        )
    }

    #[test]
    fn defaults_load_as_the_embedded_default() {
        let settings = load(None, &[]).unwrap();
        assert_eq!(settings.store.kind, StoreKind::Embedded);
        assert_eq!(settings.server.listen, "127.0.0.1:8080");
        assert_eq!(settings.sim.accounts, 10);
        assert_eq!(settings.global.leases.max_leases_per_user, 3);
        assert!(!settings.global.maintenance_mode);
    }

    #[test]
    fn file_merges_over_defaults_and_env_over_file() {
        let settings = load(
            Some("[store]\nkind = \"redis\"\n[global.leases]\nmaxBudget = 80\n"),
            &[
                ("SANDBOXD_GLOBAL__LEASES__MAXBUDGET", "90"),
                ("SANDBOXD_SIM__ACCOUNTS", "4"),
            ],
        )
        .unwrap();
        assert_eq!(settings.store.kind, StoreKind::Redis);
        assert_eq!(settings.global.leases.max_budget, 90.0);
        assert_eq!(settings.global.leases.max_duration_hours, 168.0);
        assert_eq!(settings.sim.accounts, 4);
    }

    #[test]
    fn unknown_file_key_is_an_error_naming_it() {
        let error = load(Some("[store]\nkindd = \"redis\"\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(error.contains("kindd"), "{error}");
    }

    #[test]
    fn unknown_env_key_is_an_error_naming_it() {
        let error = load(None, &[("SANDBOXD_STORE__KINDD", "redis")])
            .unwrap_err()
            .to_string();
        assert!(error.contains("store.kindd"), "{error}");
    }

    #[test]
    fn the_shipped_config_files_are_valid() {
        for file in ["config/local.toml", "config/production.example.toml"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
            let settings = Settings::load_with_env(Some(&path), std::iter::empty())
                .unwrap_or_else(|error| panic!("{file}: {error:#}"));
            assert_eq!(settings.store.kind, StoreKind::Redis, "{file}");
        }
    }

    #[test]
    fn other_sandboxd_variables_are_not_configuration() {
        let settings = load(None, &[("SANDBOXD_TEST_REDIS_URL", "redis://elsewhere")]).unwrap();
        assert_eq!(settings.store.redis_url, "redis://127.0.0.1:6379");
    }

    #[test]
    fn invalid_values_name_the_key() {
        let cases = [
            ("[server]\nlisten = \"nowhere\"\n", "server.listen"),
            (
                "[accounts]\nhub_account_id = \"12\"\n",
                "accounts.hub_account_id",
            ),
            (
                "[global.leases]\nmaxLeasesPerUser = 0\n",
                "global.invalid leases.maxLeasesPerUser",
            ),
            ("[store]\nkind = \"postgres\"\n", "postgres"),
            (
                "[events]\nsink = \"eventbridge\"\nbus_name = \"\"\n",
                "events.bus_name",
            ),
            (
                "[aws]\nendpoint_url = \"localhost:5000\"\n",
                "aws.endpoint_url",
            ),
        ];
        for (text, expected) in cases {
            let error = load(Some(text), &[]).unwrap_err().to_string();
            assert!(error.contains(expected), "{text}: {error}");
        }
    }
}
