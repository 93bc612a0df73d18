//! Command-line interface (clap). Every flag can also come from an `EXO_*` environment variable.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("EXO_GIT_COMMIT"), ")");

#[derive(Parser, Debug)]
#[command(
    name = "exo-p2p",
    version = VERSION,
    about = "Run one large language model across many ordinary machines",
    long_about = "Run one large language model across many ordinary machines.\n\n\
        Each node holds a contiguous slice of the model's layers; together the nodes serve one \
        OpenAI-compatible API. Nodes find each other on the LAN (mDNS), through bootstrap \
        nodes (Kademlia), static peers or Tailscale.\n\n\
        Logging: DEBUG=1..9 raises verbosity (as in exo); RUST_LOG takes a full filter.",
    propagate_version = true
)]
pub struct Cli {
    /// Compute threads (default: one per physical core).
    #[arg(long, global = true, env = "EXO_THREADS")]
    pub threads: Option<usize>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Generate text for one prompt and print it to stdout as it is produced.
    Run(RunArgs),
    /// Measure prompt processing and generation speed, like llama-bench.
    Bench(BenchArgs),
}

/// Sampling and length settings of a generation.
#[derive(Args, Debug, Clone)]
pub struct SamplingArgs {
    /// Maximum number of tokens to generate.
    #[arg(short = 'n', long, default_value_t = 256, env = "EXO_MAX_TOKENS")]
    pub max_tokens: usize,
    /// Sampling temperature; 0 is greedy (deterministic).
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    /// Keep the smallest set of tokens whose probability adds up to P (1 disables).
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Keep only the K most likely tokens (0 disables).
    #[arg(long, default_value_t = 40)]
    pub top_k: u32,
    /// Drop tokens less likely than P times the most likely one (0 disables).
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    /// Penalise recently seen tokens (1 disables).
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// Random seed (default: random).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop when the output contains this text (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Model: a .gguf file or a Hugging Face safetensors directory.
    pub model: PathBuf,
    /// The prompt.
    #[arg(short, long)]
    pub prompt: String,
    /// Apply the model's chat template (the prompt is the user's message).
    #[arg(long)]
    pub chat: bool,
    /// System message, with --chat.
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Model: a .gguf file or a Hugging Face safetensors directory.
    pub model: PathBuf,
    /// Prompt length for the prompt-processing test (pp).
    #[arg(long, default_value_t = 128)]
    pub prompt_tokens: usize,
    /// Tokens to generate for the generation test (tg).
    #[arg(long, default_value_t = 64)]
    pub gen_tokens: usize,
    /// Also run the model split into K in-process shards whose activations pass through the
    /// wire encoding, and compare.
    #[arg(long, default_value_t = 1)]
    pub shards: u32,
    /// Repetitions of each test.
    #[arg(short, long, default_value_t = 3)]
    pub repetitions: usize,
}
