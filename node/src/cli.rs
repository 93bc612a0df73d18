//! Command-line interface (clap). Every flag can also come from an `EXO_*` environment variable.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("EXO_GIT_COMMIT"), ")");

/// `--version`: the version and, on a second line, the CPU kernel set chosen at run time
/// (`kernels: avx512-vnni`, `kernels: neon+dotprod+i8mm`, ...).
fn version_and_kernels() -> &'static str {
    static V: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    V.get_or_init(|| {
        format!(
            "{VERSION}\nkernels: {}",
            exo_engine::quant::Isa::current().name()
        )
    })
}

#[derive(Parser, Debug)]
#[command(
    name = "exo-p2p",
    version = version_and_kernels(),
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
    /// Run a node until Ctrl-C: join the mesh, hold layers, serve the OpenAI-compatible API.
    Serve(ServeArgs),
    /// Generate text for one prompt and print it to stdout as it is produced (alone, or over
    /// the ring of nodes given with --peer/--wait-peers).
    Run(RunArgs),
    /// Measure prompt processing and generation speed, like llama-bench.
    Bench(BenchArgs),
    /// Measure a model's perplexity on a text file, as llama.cpp's llama-perplexity does
    /// (chunks of --ctx tokens, the second half of each scored).
    Perplexity(PerplexityArgs),
    /// Print this node's peer id (creating its identity on first use).
    Id,
    /// Manage the models in EXO_HOME: list, pull, rm, catalog.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// Run a public relay and bootstrap node for nodes behind NAT (serves no model).
    Relay(RelayArgs),
    /// Write a new private swarm key (IPFS swarm.key format).
    Keygen(KeygenArgs),
    /// Print a token that lets another machine join this private swarm with `--join`.
    Invite(InviteArgs),
}

#[derive(Subcommand, Debug)]
pub enum ModelsCommand {
    /// Models downloaded into EXO_HOME: size, architecture, quantization, path.
    #[command(alias = "ls")]
    List,
    /// Download a model (`owner/repo[:QUANT]` or a known name) from HF_ENDPOINT.
    Pull {
        /// `owner/repo[:QUANT]` (QUANT picks the GGUF file, default Q4_K_M) or a known name.
        reference: String,
    },
    /// Delete a downloaded model (with `:QUANT`, only that quantization's files).
    #[command(alias = "remove")]
    Rm { reference: String },
    /// The built-in short names and the repositories they stand for.
    Catalog,
}

#[derive(Args, Debug)]
pub struct RelayArgs {
    /// Address to listen on (repeatable). Default: TCP and QUIC on port 52416.
    #[arg(
        long,
        value_name = "MULTIADDR",
        env = "EXO_LISTEN",
        value_delimiter = ','
    )]
    pub listen: Vec<libp2p::Multiaddr>,
    /// Only admit nodes holding this swarm key.
    #[arg(long, value_name = "FILE", env = "EXO_SWARM_KEY")]
    pub swarm_key: Option<PathBuf>,
    /// Addresses other nodes reach this relay at (repeatable), when they differ from the
    /// listening ones (e.g. behind port forwarding). Used by `invite`.
    #[arg(long, value_name = "MULTIADDR")]
    pub external: Vec<libp2p::Multiaddr>,
}

#[derive(Args, Debug)]
pub struct KeygenArgs {
    /// Where to write the key (default: $EXO_HOME/swarm.key).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Overwrite an existing key.
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct InviteArgs {
    /// The swarm key (default: $EXO_HOME/swarm.key).
    #[arg(long, value_name = "FILE", env = "EXO_SWARM_KEY")]
    pub swarm_key: Option<PathBuf>,
    /// Relay address to put in the token (repeatable; default: the addresses a relay started
    /// with this EXO_HOME recorded).
    #[arg(long, value_name = "MULTIADDR")]
    pub relay: Vec<libp2p::Multiaddr>,
    /// Bootstrap address to put in the token (repeatable; default: the relays).
    #[arg(long, value_name = "MULTIADDR")]
    pub bootstrap: Vec<libp2p::Multiaddr>,
}

/// How a node joins the mesh.
#[derive(Args, Debug, Clone, Default)]
pub struct MeshArgs {
    /// Address to listen on for peers (repeatable). Default: TCP and QUIC on port 52416 for
    /// `serve`, a free port for `run`.
    #[arg(
        long,
        value_name = "MULTIADDR",
        env = "EXO_LISTEN",
        value_delimiter = ','
    )]
    pub listen: Vec<libp2p::Multiaddr>,
    /// A peer to connect to and keep connected (repeatable), e.g.
    /// /ip4/192.168.1.20/tcp/52416 or with a /p2p/<peer id> suffix.
    #[arg(
        long,
        value_name = "MULTIADDR",
        env = "EXO_PEERS",
        value_delimiter = ','
    )]
    pub peer: Vec<libp2p::Multiaddr>,
    /// A Kademlia bootstrap node, for finding peers across networks (repeatable).
    #[arg(
        long,
        value_name = "MULTIADDR",
        env = "EXO_BOOTSTRAP",
        value_delimiter = ','
    )]
    pub bootstrap: Vec<libp2p::Multiaddr>,
    /// Do not discover peers on the local network with mDNS.
    #[arg(long, env = "EXO_NO_MDNS", action = clap::ArgAction::SetTrue, value_parser = clap::builder::FalseyValueParser::new())]
    pub no_mdns: bool,
    /// Find peers through Tailscale (`tailscale status --json`).
    #[arg(long, env = "EXO_TAILSCALE", action = clap::ArgAction::SetTrue, value_parser = clap::builder::FalseyValueParser::new())]
    pub tailscale: bool,
    /// Memory this node offers for model layers (bytes, or 16G, 512MiB...), instead of the
    /// machine's total. Layers are split in proportion to it.
    #[arg(long, value_name = "BYTES", env = "EXO_MEMORY", value_parser = parse_memory)]
    pub memory: Option<u64>,
    /// A relay to reserve a slot on and be reachable through when behind NAT (repeatable;
    /// the address must end in /p2p/<relay peer id>).
    #[arg(
        long,
        value_name = "MULTIADDR",
        env = "EXO_RELAYS",
        value_delimiter = ','
    )]
    pub relay: Vec<libp2p::Multiaddr>,
    /// Private swarm: only nodes holding this key (IPFS swarm.key format) can connect.
    #[arg(long, value_name = "FILE", env = "EXO_SWARM_KEY")]
    pub swarm_key: Option<PathBuf>,
    /// Join a private swarm with a token from `exo-p2p invite` (swarm key, relays, bootstrap).
    #[arg(long, value_name = "TOKEN", env = "EXO_JOIN", hide_env_values = true)]
    pub join: Option<String>,
}

fn parse_memory(s: &str) -> Result<u64, String> {
    crate::sysinfo::parse_bytes(s)
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// A model this node can serve (repeatable): a .gguf file, a safetensors directory, a
    /// Hugging Face repository `owner/repo[:QUANT]`, or a known name such as `qwen2.5-coder-0.5b`
    /// (fetched into EXO_HOME on first use, from peers that have it or from HF_ENDPOINT).
    #[arg(long, value_name = "MODEL", env = "EXO_MODELS", value_delimiter = ',')]
    pub model: Vec<String>,
    #[command(flatten)]
    pub mesh: MeshArgs,
    #[command(flatten)]
    pub speculation: SpeculationArgs,
    /// Port of the HTTP API.
    #[arg(long, default_value_t = 52415, env = "EXO_API_PORT")]
    pub api_port: u16,
    /// Address the HTTP API binds to.
    #[arg(long, default_value = "0.0.0.0", env = "EXO_API_HOST")]
    pub api_host: String,
    /// Require `Authorization: Bearer KEY` on every /v1 route.
    #[arg(long, env = "EXO_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Generations this node drives at once; more get HTTP 429.
    #[arg(long, default_value_t = 8, env = "EXO_MAX_CONCURRENT")]
    pub max_concurrent: usize,
    /// OpenAI-compatible upstream providers for models the mesh does not serve (TOML or JSON).
    #[arg(long, value_name = "FILE", env = "EXO_UPSTREAM_CONFIG")]
    pub upstream_config: Option<PathBuf>,
    /// Free a request's KV cache on this node after it has been idle this many seconds (its
    /// driver is presumed gone).
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 120,
        env = "EXO_KV_IDLE_TIMEOUT"
    )]
    pub kv_idle_timeout: u64,
    /// KV-cache memory this node may hold across the requests of a loaded shard (default: half
    /// the memory available at start). A new request that does not fit waits in a bounded queue
    /// for others to finish; it is refused (HTTP 429) only when that queue is full.
    #[arg(
        long,
        alias = "max-kv-memory",
        value_name = "BYTES",
        env = "EXO_MAX_KV_MEMORY",
        value_parser = parse_memory
    )]
    pub kv_memory: Option<u64>,
}

/// Speculative decoding: something cheap proposes the next few tokens and the ring checks them
/// all in one pass, keeping those it agrees with. Only greedy generations speculate
/// (temperature 0, no repetition penalty, no grammar); their text is exactly what plain
/// decoding writes. Sampled generations decode one token per pass as before.
#[derive(Args, Debug, Clone, Default)]
pub struct SpeculationArgs {
    /// A small draft model with the same tokenizer as the model (a .gguf file, a safetensors
    /// directory, `owner/repo[:QUANT]` or a known name), held by the driving node: it proposes
    /// tokens (more while the ring accepts them all, fewer when it rejects them) that the ring
    /// verifies in one pass. A draft whose tokenizer differs is refused.
    #[arg(long, value_name = "MODEL", env = "EXO_DRAFT")]
    pub draft: Option<String>,
    /// Prompt lookup: propose the tokens that followed the last few tokens where they occurred
    /// before, in the prompt or the text so far (helps code edits and questions about a pasted
    /// document; needs no draft model).
    #[arg(long, env = "EXO_LOOKUP", conflicts_with = "draft", action = clap::ArgAction::SetTrue, value_parser = clap::builder::FalseyValueParser::new())]
    pub lookup: bool,
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
    /// Model: a .gguf file, a safetensors directory, `owner/repo[:QUANT]` on Hugging Face, or a
    /// known name (see `exo-p2p models catalog`); fetched on first use.
    pub model: String,
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
    #[command(flatten)]
    pub speculation: SpeculationArgs,
    #[command(flatten)]
    pub mesh: MeshArgs,
    /// Wait until this many other nodes serving MODEL are in the topology, then run over the
    /// ring of all of them.
    #[arg(long, default_value_t = 0)]
    pub wait_peers: usize,
    /// How long to wait for --wait-peers, in seconds.
    #[arg(long, default_value_t = 60)]
    pub wait_timeout: u64,
    /// Also run this many streams at once (each a --prompt-tokens prompt, then --gen-tokens
    /// tokens) for each count listed, e.g. `1,4,8`: aggregate and per-stream tok/s and time to
    /// first token, on one node and on the ring (the ring defaults to 1,4).
    #[arg(long, value_delimiter = ',', value_name = "N,N,...")]
    pub concurrency: Vec<usize>,
}

impl MeshArgs {
    /// Whether any flag asks to join a mesh.
    pub fn joins(&self) -> bool {
        !self.peer.is_empty()
            || !self.bootstrap.is_empty()
            || !self.relay.is_empty()
            || self.join.is_some()
            || self.tailscale
    }
}

#[derive(Args, Debug)]
pub struct PerplexityArgs {
    /// Model: a .gguf file, a safetensors directory, `owner/repo[:QUANT]` or a known name.
    pub model: String,
    /// A UTF-8 text file (e.g. wikitext-2's wiki.test.raw).
    pub file: PathBuf,
    /// Tokens per chunk (llama-perplexity's -c).
    #[arg(short = 'c', long, default_value_t = 512)]
    pub ctx: usize,
    /// Evaluate at most this many chunks (llama-perplexity's --chunks; default all).
    #[arg(long)]
    pub chunks: Option<usize>,
    /// Print the result as one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Model: a .gguf file, a safetensors directory, `owner/repo[:QUANT]` or a known name.
    pub model: String,
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
    /// With --draft or --lookup: also generate --gen-tokens tokens greedily for a code-writing
    /// chat prompt, plainly and speculating, on one node and on the ring, and print tok/s and
    /// the acceptance rate.
    #[command(flatten)]
    pub speculation: SpeculationArgs,
    #[command(flatten)]
    pub mesh: MeshArgs,
    /// Also measure the ring of this node and this many other nodes serving MODEL.
    #[arg(long, default_value_t = 0)]
    pub wait_peers: usize,
    /// How long to wait for --wait-peers, in seconds.
    #[arg(long, default_value_t = 60)]
    pub wait_timeout: u64,
    /// Also run this many streams at once (each a --prompt-tokens prompt, then --gen-tokens
    /// tokens) for each count listed, e.g. `1,4,8`: aggregate and per-stream tok/s and time to
    /// first token, on one node and on the ring (the ring defaults to 1,4).
    #[arg(long, value_delimiter = ',', value_name = "N,N,...")]
    pub concurrency: Vec<usize>,
}
