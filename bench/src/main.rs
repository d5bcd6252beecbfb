//! The benchmark harness: `run` measures every target of BENCHMARKS.md against anchors started
//! in the same run; `hello` and `sqlx-read` are those anchors, started by `run` as their own
//! processes so that they can be pinned to the CPU the gateway gets.

mod anchors;
mod load;
mod machine;
mod procs;
mod report;
mod scenario;
mod seed;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "fluence-gateway-bench",
    about = "Benchmarks of fluence-gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Anchor: the smallest axum server, answering "Hello, World!".
    Hello {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
    /// Anchor: the hello server with the gateway's access log (a request id, a span, one JSON
    /// line per request).
    HelloLogged {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
    /// Anchor: a naive axum handler reading 100 rows from SQLite with sqlx, as JSON (`/items`),
    /// and one row by primary key (`/item`).
    SqlxRead {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// The SQLite file to create and fill.
        #[arg(long)]
        db: PathBuf,
    },
    /// Every measurement, with the anchors beside them; writes the results table.
    Run(scenario::Options),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        // The anchors run as an axum server normally runs: on the multi-threaded runtime, which
        // sizes itself to the CPUs the process may use (one, when pinned).
        Command::Hello { listen } => {
            multi_thread().and_then(|rt| rt.block_on(anchors::hello(listen)))
        }
        Command::HelloLogged { listen } => {
            multi_thread().and_then(|rt| rt.block_on(anchors::hello_logged(listen)))
        }
        Command::SqlxRead { listen, db } => {
            multi_thread().and_then(|rt| rt.block_on(anchors::sqlx_read(listen, db)))
        }
        // The load generator shares its runtime with the orchestration; one thread, because it
        // is pinned to one CPU.
        Command::Run(options) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("runtime: {e}"))
            .and_then(|rt| {
                let result = rt.block_on(scenario::run(options));
                // Children are killed on drop; give them a moment rather than leaving orphans.
                rt.shutdown_timeout(Duration::from_secs(2));
                result
            }),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("fluence-gateway-bench: {error}");
            ExitCode::FAILURE
        }
    }
}

fn multi_thread() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))
}
