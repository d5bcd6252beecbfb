use clap::Parser;

use fluence_gateway::cli::{self, Cli};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli::main(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("fluence-gateway: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}
