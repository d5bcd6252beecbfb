//! The command line: `serve` (the default), `simulator`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use secrecy::SecretString;
use tokio::net::TcpListener;

use crate::admin;
use crate::config::{LogFormat, LogSettings, Settings, Sources};
use crate::domain::money::Usdc;
use crate::simulator::{BillingMode, ClockMode, Simulator, SimulatorConfig};
use crate::startup::{self, shutdown_signal};
use crate::telemetry;

#[derive(Debug, Parser)]
#[command(
    name = "fluence-gateway",
    version,
    about = "A budget-keeping gateway in front of the Fluence CPU Cloud API"
)]
pub struct Cli {
    /// A TOML file layered over the built-in defaults (see config/default.toml).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (the default).
    Serve,
    /// Run the Fluence simulator standalone, for a gateway in `fluence` mode or for tests.
    Simulator(SimulatorArgs),
    /// Administration on the gateway's database.
    #[command(subcommand)]
    Admin(AdminCommand),
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Mint an admin key and print it once, as JSON, on standard output.
    CreateKey {
        /// What the key is for, e.g. `ops-laptop`.
        #[arg(long)]
        name: String,
        /// When it stops working (RFC 3339); never by default.
        #[arg(long, value_name = "TIME")]
        expires_at: Option<chrono::DateTime<chrono::Utc>>,
    },
}

#[derive(clap::Args)]
pub struct SimulatorArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8090")]
    pub listen: SocketAddr,
    /// An accepted API key (repeatable). Default: `sim-key`.
    #[arg(long = "api-key", value_name = "KEY")]
    pub api_keys: Vec<String>,
    /// Seed of the simulated marketplace.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Simulated time moves only through `POST /_sim/clock`, never by itself.
    #[arg(long)]
    pub manual_clock: bool,
    /// Seconds a VM spends launching before it is Active.
    #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u64).range(0..=600))]
    pub launch_seconds: u64,
    /// When VMs are billed.
    #[arg(long, value_enum, default_value_t = BillingArg::PerInstance)]
    pub billing_mode: BillingArg,
    /// Starting account balance in USDC.
    #[arg(long, default_value = "10000", value_parser = parse_usdc)]
    pub balance: Usdc,
}

impl std::fmt::Debug for SimulatorArgs {
    /// The accepted keys are counted, never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimulatorArgs")
            .field("listen", &self.listen)
            .field(
                "api_keys",
                &format_args!("[{} redacted]", self.api_keys.len()),
            )
            .field("seed", &self.seed)
            .field("manual_clock", &self.manual_clock)
            .field("launch_seconds", &self.launch_seconds)
            .field("billing_mode", &self.billing_mode)
            .field("balance", &self.balance)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum BillingArg {
    /// Every 24 h from each VM's creation.
    PerInstance,
    /// Daily at 17:55 UTC.
    Global,
}

fn parse_usdc(text: &str) -> Result<Usdc, String> {
    Usdc::parse(text).map_err(|e| format!("{text:?} {e}"))
}

/// Runs the command line; the process exit code comes from the result.
pub async fn main(cli: Cli) -> Result<(), String> {
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(cli.config).await,
        Command::Simulator(args) => simulator(args).await,
        Command::Admin(AdminCommand::CreateKey { name, expires_at }) => {
            let loaded =
                Settings::load(&Sources::from_process(cli.config)).map_err(|e| e.to_string())?;
            let created = admin::create_admin_key(&loaded.settings, &name, expires_at)
                .await
                .map_err(|e| e.to_string())?;
            println!("{created}");
            Ok(())
        }
    }
}

async fn serve(config: Option<PathBuf>) -> Result<(), String> {
    let loaded = Settings::load(&Sources::from_process(config)).map_err(|e| e.to_string())?;
    let _log_writer = telemetry::init(&loaded.settings.log);
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
    let addr = loaded.settings.server.listen;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    startup::run(loaded.settings, listener, shutdown_signal())
        .await
        .map_err(|e| e.to_string())
}

async fn simulator(args: SimulatorArgs) -> Result<(), String> {
    let _log_writer = telemetry::init(&LogSettings {
        format: LogFormat::Auto,
        filter: "info".to_owned(),
    });
    let api_keys = if args.api_keys.is_empty() {
        vec![SecretString::from("sim-key")]
    } else {
        args.api_keys.into_iter().map(SecretString::from).collect()
    };
    let config = SimulatorConfig {
        seed: args.seed,
        api_keys,
        clock: if args.manual_clock {
            ClockMode::Manual
        } else {
            ClockMode::Wall
        },
        start_time: None,
        initial_balance: args.balance,
        launch_seconds: args.launch_seconds,
        billing_mode: match args.billing_mode {
            BillingArg::PerInstance => BillingMode::PerInstance,
            BillingArg::Global => BillingMode::Global,
        },
    };
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    // The bound address, not the requested one: with port 0 this is how callers find it.
    let listen = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(%listen, seed = args.seed, "Fluence simulator listening (control API under /_sim/)");
    Simulator::new(config)
        .serve(listener, shutdown_signal())
        .await
        .map_err(|e| e.to_string())
}
