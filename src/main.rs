use clap::{Parser, Subcommand};

/// Keeps SaaS tenant certificates valid, installed and rotated.
#[derive(Parser, Debug)]
#[command(name = "certrotor", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print every CRD as multi-document YAML.
    Crd,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => print!("{}", certrotor::api::crds_yaml()),
    }
    Ok(())
}
