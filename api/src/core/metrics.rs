//! `/metrics`: the one Prometheus text writer ([`Exposition`], format 0.0.4), the value types
//! that feed it ([`Counter`], [`CounterFamily`], [`HistogramFamily`]), and the API's own counters.
//! The backend (the node) keeps its values in these types and writes them through the same
//! writer, so every line of the exposition has one format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Prometheus text exposition, written metric by metric.
#[derive(Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    pub fn new() -> Self {
        Self::default()
    }

    fn header(&mut self, name: &str, help: &str, kind: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// A counter without labels; `name` carries its `_total`.
    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.header(name, help, "counter");
        let _ = writeln!(self.out, "{name} {value}");
    }

    pub fn gauge(&mut self, name: &str, help: &str, value: u64) {
        self.header(name, help, "gauge");
        let _ = writeln!(self.out, "{name} {value}");
    }

    /// A counter with one line per label set.
    pub fn counters<'a, L: Labels + 'a>(
        &mut self,
        name: &str,
        help: &str,
        rows: impl IntoIterator<Item = (&'a L, u64)>,
    ) {
        self.header(name, help, "counter");
        for (labels, value) in rows {
            let _ = writeln!(self.out, "{name}{} {value}", render(&labels.pairs(), None));
        }
    }

    /// A histogram with one set of `_bucket`/`_sum`/`_count` lines per label set.
    pub fn histograms<'a, L: Labels + 'a>(
        &mut self,
        name: &str,
        help: &str,
        rows: impl IntoIterator<Item = (&'a L, &'a Histogram)>,
    ) {
        self.header(name, help, "histogram");
        for (labels, h) in rows {
            let pairs = labels.pairs();
            let mut cumulative = 0;
            for (bound, n) in h.bounds.iter().zip(&h.counts) {
                cumulative += n;
                let le = render(&pairs, Some(&bound.to_string()));
                let _ = writeln!(self.out, "{name}_bucket{le} {cumulative}");
            }
            cumulative += h.counts[h.bounds.len()];
            let _ = writeln!(
                self.out,
                "{name}_bucket{} {cumulative}\n{name}_sum{plain} {}\n{name}_count{plain} {}",
                render(&pairs, Some("+Inf")),
                h.sum,
                h.count,
                plain = render(&pairs, None),
            );
        }
    }

    /// A summary without quantiles: its sum and count.
    pub fn summary(&mut self, name: &str, help: &str, sum: f64, count: u64) {
        self.header(name, help, "summary");
        let _ = writeln!(self.out, "{name}_sum {sum}\n{name}_count {count}");
    }

    pub fn finish(self) -> String {
        self.out
    }
}

/// `{a="x",b="y"}` (empty without labels), with `le` last for histogram buckets.
fn render(pairs: &[(&str, String)], le: Option<&str>) -> String {
    let mut all: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    if let Some(le) = le {
        all.push(format!("le=\"{le}\""));
    }
    if all.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", all.join(","))
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A label set: names and values in the order they are written.
pub trait Labels: Ord + Clone {
    fn pairs(&self) -> Vec<(&'static str, String)>;
}

/// One label, e.g. `Label("kind", ..)`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Label(pub &'static str, pub String);

impl Labels for Label {
    fn pairs(&self) -> Vec<(&'static str, String)> {
        vec![(self.0, self.1.clone())]
    }
}

#[derive(Default, Debug)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.inc_by(1);
    }

    pub fn inc_by(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Counters by label set, created on first use.
pub struct CounterFamily<L>(Mutex<BTreeMap<L, u64>>);

impl<L> Default for CounterFamily<L> {
    fn default() -> Self {
        Self(Mutex::new(BTreeMap::new()))
    }
}

impl<L: Labels> CounterFamily<L> {
    pub fn inc_by(&self, labels: L, n: u64) {
        *lock(&self.0).entry(labels).or_default() += n;
    }

    pub fn snapshot(&self) -> Vec<(L, u64)> {
        lock(&self.0).iter().map(|(l, n)| (l.clone(), *n)).collect()
    }

    pub fn write(&self, out: &mut Exposition, name: &str, help: &str) {
        let rows = self.snapshot();
        out.counters(name, help, rows.iter().map(|(l, n)| (l, *n)));
    }
}

/// Observations counted into fixed buckets (upper bounds, ascending; `+Inf` implied).
#[derive(Clone, Debug)]
pub struct Histogram {
    bounds: Vec<f64>,
    /// One per bound plus the `+Inf` overflow; not cumulative.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    /// `count` bounds from `start`, each `factor` times the one before.
    pub fn exponential(start: f64, factor: f64, count: usize) -> Self {
        let bounds: Vec<f64> = (0..count as i32).map(|i| start * factor.powi(i)).collect();
        Self {
            counts: vec![0; bounds.len() + 1],
            bounds,
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, v: f64) {
        let i = self.bounds.partition_point(|b| *b < v);
        self.counts[i] += 1;
        self.sum += v;
        self.count += 1;
    }
}

/// Histograms by label set, each made by `new` on first use.
pub struct HistogramFamily<L> {
    new: fn() -> Histogram,
    by: Mutex<BTreeMap<L, Histogram>>,
}

impl<L: Labels> HistogramFamily<L> {
    pub fn new(new: fn() -> Histogram) -> Self {
        Self {
            new,
            by: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn observe(&self, labels: L, v: f64) {
        lock(&self.by)
            .entry(labels)
            .or_insert_with(self.new)
            .observe(v);
    }

    pub fn write(&self, out: &mut Exposition, name: &str, help: &str) {
        let rows: Vec<(L, Histogram)> = lock(&self.by)
            .iter()
            .map(|(l, h)| (l.clone(), h.clone()))
            .collect();
        out.histograms(name, help, rows.iter().map(|(l, h)| (l, h)));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `route` and `status` of an answered request.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct RouteStatus(String, u16);

impl Labels for RouteStatus {
    fn pairs(&self) -> Vec<(&'static str, String)> {
        vec![("route", self.0.clone()), ("status", self.1.to_string())]
    }
}

/// The API's own counters, written after the backend's on `/metrics`.
#[derive(Default)]
pub struct ApiMetrics {
    /// By route (the router's matched path, so the label set is fixed) and status.
    requests: CounterFamily<RouteStatus>,
    rejected: Counter,
    prompt_tokens: Counter,
    completion_tokens: Counter,
    disconnects: Counter,
    ttft_micros_sum: Counter,
    ttft_count: Counter,
}

impl ApiMetrics {
    pub fn request(&self, route: &str, status: u16) {
        self.requests
            .inc_by(RouteStatus(route.to_owned(), status), 1);
    }

    pub fn rejected(&self) {
        self.rejected.inc();
    }

    pub fn tokens(&self, prompt: usize, completion: usize) {
        self.prompt_tokens.inc_by(prompt as u64);
        self.completion_tokens.inc_by(completion as u64);
    }

    pub fn disconnect(&self) {
        self.disconnects.inc();
    }

    pub fn first_token(&self, ttft: Duration) {
        self.ttft_micros_sum.inc_by(ttft.as_micros() as u64);
        self.ttft_count.inc();
    }

    pub fn write(&self, out: &mut Exposition, in_flight: usize, queued: usize) {
        self.requests.write(
            out,
            "exo_api_requests_total",
            "HTTP requests answered, by route and status.",
        );
        out.gauge(
            "exo_api_generations_in_flight",
            "Generations holding a slot.",
            in_flight as u64,
        );
        out.gauge(
            "exo_api_generations_queued",
            "Requests waiting for a slot.",
            queued as u64,
        );
        out.counter(
            "exo_api_rejected_total",
            "Requests refused with 429 because every slot and the queue were full.",
            self.rejected.get(),
        );
        out.counter(
            "exo_api_prompt_tokens_total",
            "Prompt tokens of finished generations.",
            self.prompt_tokens.get(),
        );
        out.counter(
            "exo_api_completion_tokens_total",
            "Tokens generated by finished generations.",
            self.completion_tokens.get(),
        );
        out.counter(
            "exo_api_client_disconnects_total",
            "Streams whose client left before the end (the generation was cancelled).",
            self.disconnects.get(),
        );
        out.summary(
            "exo_api_time_to_first_token_seconds",
            "Time from request to first token.",
            self.ttft_micros_sum.get() as f64 / 1e6,
            self.ttft_count.get(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_lines_are_cumulative_with_le_last() {
        let family = HistogramFamily::new(|| Histogram::exponential(0.5, 2.0, 2));
        for v in [0.25, 0.75, 1.0, 5.0] {
            family.observe(Label("peer", "p\"1".into()), v);
        }
        let mut out = Exposition::new();
        family.write(&mut out, "x_seconds", "X.");
        assert_eq!(
            out.finish(),
            "# HELP x_seconds X.\n# TYPE x_seconds histogram\n\
             x_seconds_bucket{peer=\"p\\\"1\",le=\"0.5\"} 1\n\
             x_seconds_bucket{peer=\"p\\\"1\",le=\"1\"} 3\n\
             x_seconds_bucket{peer=\"p\\\"1\",le=\"+Inf\"} 4\n\
             x_seconds_sum{peer=\"p\\\"1\"} 7\n\
             x_seconds_count{peer=\"p\\\"1\"} 4\n"
        );
    }

    #[test]
    fn api_counters_keep_their_names() {
        let m = ApiMetrics::default();
        m.request("/v1/chat/completions", 200);
        m.request("/v1/chat/completions", 200);
        m.tokens(3, 4);
        let mut out = Exposition::new();
        m.write(&mut out, 1, 0);
        let text = out.finish();
        for line in [
            "exo_api_requests_total{route=\"/v1/chat/completions\",status=\"200\"} 2",
            "exo_api_generations_in_flight 1",
            "exo_api_generations_queued 0",
            "exo_api_prompt_tokens_total 3",
            "exo_api_completion_tokens_total 4",
            "# TYPE exo_api_time_to_first_token_seconds summary",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
    }
}
