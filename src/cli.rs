//! The command line. These names are the interface: keep them.

use std::path::PathBuf;

use anyhow::bail;
use clap::{Args, Parser, Subcommand};
use sandboxd_actors::domain::Role;

use crate::config::Settings;

#[derive(Debug, Parser)]
#[command(
    name = "sandboxd",
    version,
    about = "A pool of AWS sandbox accounts and the time-boxed, budget-capped leases on them"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Clone, Default, Args)]
pub struct Location {
    /// Config file merged over the built-in defaults (config/default.toml).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory (embedded store, generated secret); overrides store.data_dir.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon (the default with no subcommand: the embedded default mode).
    Run {
        #[command(flatten)]
        location: Location,
        /// Address of the admin API; overrides server.listen.
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
    },
    /// Print a valid API token for this daemon.
    Token {
        #[arg(long)]
        email: String,
        #[arg(long, value_parser = ["Admin", "Manager", "User"])]
        role: String,
        #[command(flatten)]
        location: Location,
    },
    /// A scripted walk-through of the whole lifecycle on an accelerated clock.
    Demo,
    /// Configuration commands.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Throughput, latency, memory and rehydration benchmark (prints its figures).
    Bench(crate::bench::BenchArgs),
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Load and validate the configuration; print the effective settings' summary.
    Check {
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

pub fn settings_for(location: &Location, listen: Option<String>) -> anyhow::Result<Settings> {
    let mut settings = Settings::load(location.config.as_deref())?;
    if let Some(dir) = &location.data_dir {
        settings.store.data_dir = dir.clone();
    }
    if let Some(listen) = listen {
        settings.server.listen = listen;
    }
    settings.validate()?;
    Ok(settings)
}

pub fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        None => crate::daemon::run(settings_for(&Location::default(), None)?),
        Some(Command::Run { location, listen }) => {
            crate::daemon::run(settings_for(&location, listen)?)
        }
        Some(Command::Token {
            email,
            role,
            location,
        }) => {
            let settings = settings_for(&location, None)?;
            let Some(role) = Role::parse(&role) else {
                bail!("--role must be Admin, Manager or User")
            };
            println!("{}", crate::daemon::token_for(&settings, &email, role)?);
            Ok(())
        }
        Some(Command::Demo) => crate::demo::run(),
        Some(Command::Config {
            command: ConfigCommand::Check { config },
        }) => {
            let settings = Settings::load(config.as_deref())?;
            println!(
                "configuration ok: store={:?} listen={} aws={:?} data_dir={}",
                settings.store.kind,
                settings.server.listen,
                settings.aws.mode,
                settings.store.data_dir.display()
            );
            Ok(())
        }
        Some(Command::Bench(args)) => crate::bench::run(args),
    }
}
