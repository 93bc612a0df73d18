//! The `exo-p2p` binary: command-line parsing and dispatch only.

mod cpu_check;

use clap::Parser;

use exo_p2p::{
    bench,
    cli::{Cli, Command},
    identity, logging, models, perplexity, relay, run, serve, threads,
};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.command {
        Command::Run(_) | Command::Bench(_) | Command::Perplexity(_) | Command::Id => "warn",
        Command::Keygen(_) | Command::Invite(_) | Command::Models(_) => "warn",
        Command::Serve(_) | Command::Relay(_) => "info",
    };
    logging::init(default_level);
    // Here, not where the level is first chosen: `--version` asks for it before logging starts.
    tracing::debug!(level = ?exo_engine::quant::Isa::current(), "quantized kernels");
    let threads = threads::configure(cli.threads);
    let result = match cli.command {
        Command::Bench(args) => runtime().block_on(bench::bench(args, threads)),
        Command::Run(args) => runtime().block_on(run::run(args, threads)),
        Command::Perplexity(args) => runtime().block_on(perplexity::perplexity(args)),
        Command::Serve(args) => runtime().block_on(serve::serve(args, threads)),
        Command::Relay(args) => runtime().block_on(relay::relay(args)),
        Command::Keygen(args) => relay::keygen(args),
        Command::Models(cmd) => runtime().block_on(models::command(cmd)),
        Command::Invite(args) => relay::invite(args),
        Command::Id => identity::load_or_create(&identity::exo_home()).map(|k| {
            println!("{}", k.public().to_peer_id());
        }),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One clear line: the error and its causes.
            eprintln!("error: {}", error_chain(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("cannot start the async runtime")
}

fn error_chain(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        // Some library errors append a backtrace (RUST_BACKTRACE); keep their first line.
        let s = cause
            .to_string()
            .lines()
            .next()
            .unwrap_or_default()
            .to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    parts.join(": ")
}
