//! Logs go to stderr through `tracing`. `RUST_LOG` wins when set; otherwise `DEBUG` (0-9, as in
//! exo) picks the level: 0 the command's default, 1-4 debug for exo-p2p, 5-8 trace for exo-p2p
//! and debug for libraries, 9 trace for everything.

use tracing_subscriber::{fmt, EnvFilter};

const OURS: &[&str] = &["exo_p2p", "exo_engine", "exo_api", "exo_protocol"];

pub fn init(default_level: &str) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(s) if !s.is_empty() => EnvFilter::new(s),
        _ => EnvFilter::new(filter_for(debug_level(), default_level)),
    };
    use std::io::IsTerminal;
    fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

fn debug_level() -> u8 {
    std::env::var("DEBUG")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn filter_for(debug: u8, default_level: &str) -> String {
    let ours = |level: &str| {
        OURS.iter()
            .map(|c| format!("{c}={level}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    match debug {
        0 => format!("warn,{}", ours(default_level)),
        1..=4 => format!("warn,{}", ours("debug")),
        5..=8 => format!("debug,{}", ours("trace")),
        _ => "trace".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::filter_for;

    #[test]
    fn debug_levels_map_to_filters() {
        assert!(filter_for(0, "info").contains("exo_engine=info"));
        assert!(filter_for(2, "info").contains("exo_p2p=debug"));
        assert!(filter_for(6, "info").starts_with("debug,"));
        assert_eq!(filter_for(9, "info"), "trace");
    }
}
