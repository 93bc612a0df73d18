//! Shows download progress to a person: indicatif bars (bytes, speed, ETA) when stderr is a
//! terminal, plain periodic lines when it is not (logs, CI, `2>file`).

use std::{
    collections::HashMap,
    io::{IsTerminal, Write},
    sync::Mutex,
    time::{Duration, Instant},
};

use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::progress::{FileProgress, FileStatus, Progress};

pub struct TerminalReporter {
    mode: Mode,
}

enum Mode {
    Bars {
        multi: MultiProgress,
        bars: Mutex<HashMap<(String, String), ProgressBar>>,
    },
    Lines {
        every: Duration,
        out: Mutex<Box<dyn Write + Send>>,
        seen: Mutex<HashMap<(String, String), LineState>>,
    },
}

struct LineState {
    started: Instant,
    start_bytes: u64,
    last_print: Instant,
}

impl Default for TerminalReporter {
    fn default() -> Self {
        Self::new()
    }
}

impl TerminalReporter {
    /// Bars on a terminal, otherwise a line per file every 5 s, on stderr.
    pub fn new() -> Self {
        if std::io::stderr().is_terminal() {
            Self::bars()
        } else {
            Self::lines(Duration::from_secs(5), Box::new(std::io::stderr()))
        }
    }

    pub fn bars() -> Self {
        Self {
            mode: Mode::Bars {
                multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
                bars: Mutex::new(HashMap::new()),
            },
        }
    }

    /// Plain lines to `out`, at most one per file every `every` while it downloads.
    pub fn lines(every: Duration, out: Box<dyn Write + Send>) -> Self {
        Self {
            mode: Mode::Lines {
                every,
                out: Mutex::new(out),
                seen: Mutex::new(HashMap::new()),
            },
        }
    }
}

fn style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{msg:40!} [{bar:30.cyan/blue}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
    )
    .expect("valid progress template")
    .progress_chars("=> ")
}

fn label(p: &FileProgress) -> String {
    let name = p.file.rsplit('/').next().unwrap_or(&p.file);
    if p.source == crate::progress::SOURCE_HUB {
        name.to_string()
    } else {
        format!("{name} (peer {})", short(&p.source))
    }
}

fn short(s: &str) -> &str {
    let n = s.len();
    if n > 12 {
        &s[n - 8..]
    } else {
        s
    }
}

impl Progress for TerminalReporter {
    fn update(&self, p: &FileProgress) {
        match &self.mode {
            Mode::Bars { multi, bars } => {
                let mut bars = bars.lock().expect("reporter poisoned");
                let key = (p.repo.clone(), p.file.clone());
                if p.status == FileStatus::Queued && !bars.contains_key(&key) {
                    return;
                }
                let bar = bars.entry(key).or_insert_with(|| {
                    let bar = multi.add(ProgressBar::new(p.total.unwrap_or(0)));
                    bar.set_style(style());
                    bar.set_position(p.downloaded);
                    bar.reset_eta();
                    bar
                });
                if let Some(t) = p.total {
                    bar.set_length(t);
                }
                bar.set_position(p.downloaded);
                match p.status {
                    FileStatus::Verifying => bar.set_message(format!("{} (verifying)", label(p))),
                    FileStatus::Done => bar.finish_with_message(format!("{} done", label(p))),
                    FileStatus::Cached => {
                        bar.finish_with_message(format!("{} up to date", label(p)))
                    }
                    FileStatus::Failed => bar.abandon_with_message(format!(
                        "{} failed: {}",
                        label(p),
                        p.error.as_deref().unwrap_or("")
                    )),
                    _ => bar.set_message(label(p)),
                }
            }
            Mode::Lines { every, out, seen } => {
                let mut seen = seen.lock().expect("reporter poisoned");
                let key = (p.repo.clone(), p.file.clone());
                let now = Instant::now();
                let line = match p.status {
                    FileStatus::Queued => None,
                    FileStatus::Downloading => match seen.get_mut(&key) {
                        None => {
                            seen.insert(
                                key,
                                LineState {
                                    started: now,
                                    start_bytes: p.downloaded,
                                    last_print: now,
                                },
                            );
                            Some(format!(
                                "downloading {}/{} ({}) from {}{}",
                                p.repo,
                                p.file,
                                p.total
                                    .map(|t| HumanBytes(t).to_string())
                                    .unwrap_or("?".into()),
                                p.source,
                                if p.downloaded > 0 {
                                    format!(", resuming at {}", HumanBytes(p.downloaded))
                                } else {
                                    String::new()
                                }
                            ))
                        }
                        Some(s) if now.duration_since(s.last_print) >= *every => {
                            s.last_print = now;
                            let secs = now.duration_since(s.started).as_secs_f64().max(1e-3);
                            let rate =
                                (p.downloaded - s.start_bytes.min(p.downloaded)) as f64 / secs;
                            let pct = p
                                .total
                                .filter(|t| *t > 0)
                                .map(|t| {
                                    format!(" ({:.0}%)", p.downloaded as f64 * 100.0 / t as f64)
                                })
                                .unwrap_or_default();
                            let eta = p
                                .total
                                .filter(|_| rate > 0.0)
                                .map(|t| {
                                    format!(
                                        ", ETA {:.0}s",
                                        (t.saturating_sub(p.downloaded)) as f64 / rate
                                    )
                                })
                                .unwrap_or_default();
                            Some(format!(
                                "{}/{}: {} of {}{pct}, {}/s{eta}",
                                p.repo,
                                p.file,
                                HumanBytes(p.downloaded),
                                p.total
                                    .map(|t| HumanBytes(t).to_string())
                                    .unwrap_or("?".into()),
                                HumanBytes(rate as u64),
                            ))
                        }
                        Some(_) => None,
                    },
                    FileStatus::Verifying => None,
                    FileStatus::Done => {
                        let took = seen
                            .remove(&key)
                            .map(|s| {
                                format!(" in {:.1}s", now.duration_since(s.started).as_secs_f64())
                            })
                            .unwrap_or_default();
                        Some(format!(
                            "downloaded {}/{} ({}) from {}{took}",
                            p.repo,
                            p.file,
                            HumanBytes(p.downloaded),
                            p.source
                        ))
                    }
                    FileStatus::Cached => Some(format!("{}/{} is up to date", p.repo, p.file)),
                    FileStatus::Failed => {
                        seen.remove(&key);
                        Some(format!(
                            "failed {}/{}: {}",
                            p.repo,
                            p.file,
                            p.error.as_deref().unwrap_or("unknown error")
                        ))
                    }
                };
                if let Some(line) = line {
                    let mut out = out.lock().expect("reporter poisoned");
                    let _ = writeln!(out, "{line}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::progress::SOURCE_HUB;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn plain_lines_are_throttled() {
        let buf = Buf::default();
        let r = TerminalReporter::lines(Duration::from_secs(3600), Box::new(buf.clone()));
        let mut p = FileProgress {
            repo: "a/b".into(),
            file: "m.gguf".into(),
            downloaded: 0,
            total: Some(100),
            source: SOURCE_HUB.into(),
            status: FileStatus::Downloading,
            error: None,
        };
        for i in 0..100 {
            p.downloaded = i;
            r.update(&p);
        }
        p.downloaded = 100;
        p.status = FileStatus::Done;
        r.update(&p);
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].starts_with("downloading a/b/m.gguf (100 B) from hub"));
        assert!(lines[1].starts_with("downloaded a/b/m.gguf (100 B) from hub"));
    }
}
