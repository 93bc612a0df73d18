//! Serves the API over a deterministic fake backend (the one the tests use), for the Python
//! client tests and the browser test, or to try the web page without a mesh:
//!
//! ```sh
//! cargo run -p exo-api --example fake_server -- --port 52415 [--api-key KEY] [--token-delay-ms 40]
//! ```
//!
//! It binds 127.0.0.1 only, prints `listening on http://127.0.0.1:PORT` once ready (`--port 0`
//! picks a free port), and serves until killed. No upstream providers: environment keys such
//! as `OPENAI_API_KEY` are ignored here.

#[path = "../tests/common/fake.rs"]
mod fake;

use std::io::Write;
use std::time::Duration;

use exo_api::ApiConfig;

fn usage() -> ! {
    eprintln!("usage: fake_server [--port N] [--api-key KEY] [--token-delay-ms N]");
    std::process::exit(2)
}

#[tokio::main]
async fn main() {
    let mut port = exo_api::DEFAULT_PORT;
    let mut api_key = None;
    let mut delay_ms = 40u64;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage());
        match arg.as_str() {
            "--port" => port = value().parse().unwrap_or_else(|_| usage()),
            "--api-key" => api_key = Some(value()),
            "--token-delay-ms" => delay_ms = value().parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap_or_else(|e| {
            eprintln!("cannot bind 127.0.0.1:{port}: {e}");
            std::process::exit(1)
        });
    let addr = listener.local_addr().expect("bound address");
    println!("listening on http://{addr}");
    std::io::stdout().flush().expect("stdout");
    let backend = fake::FakeBackend::new(Duration::from_millis(delay_ms));
    let config = ApiConfig {
        api_key,
        ..ApiConfig::default()
    };
    if let Err(e) = exo_api::serve(listener, backend, config).await {
        eprintln!("server failed: {e}");
        std::process::exit(1);
    }
}
