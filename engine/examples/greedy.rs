//! Greedy decoding of one prompt with the engine alone (no node, no network), for comparing
//! builds: `cargo run --release -p exo-engine --example greedy -- MODEL.gguf PROMPT [TOKENS]`
//! prints the generated token ids on one line, then their text; on stderr, the margin greedy had
//! at each step (top logit minus the runner-up's, as scripts/llamacpp-greedy.sh's `gap`), to tell
//! a near tie from a real difference. scripts/test-arm.sh runs it
//! cross-built for aarch64 under qemu against the x86 build (exo-p2p cross-builds too slowly
//! for CI; `exo-p2p run` drives the same `LocalRing`).

use std::path::Path;

use candle_core::Device;
use exo_engine::{LocalRing, ModelInfo};
use exo_protocol::SamplingParams;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, prompt, rest @ ..] = args.as_slice() else {
        anyhow::bail!("usage: greedy MODEL.gguf PROMPT [TOKENS]");
    };
    let n: usize = rest.first().map_or(Ok(8), |s| s.parse())?;
    let path = Path::new(model);
    let info = ModelInfo::load(path)?;
    let ring = LocalRing::load(path, 1, &Device::Cpu)?;
    let greedy = SamplingParams {
        logprobs: true,
        top_logprobs: 2,
        ..SamplingParams::greedy()
    };
    let prompt = info.encode_prompt(prompt)?;
    let (mut ids, mut gaps) = (Vec::new(), Vec::new());
    let mut tok = ring.step("greedy", 0, &prompt, &greedy)?;
    for pos in prompt.len()..prompt.len() + n {
        if info.tokenizer.is_eog(tok.id) {
            break;
        }
        ids.push(tok.id);
        // Log-probabilities share the softmax's normaliser: their difference is the logits'.
        if let [(_, a), (_, b), ..] = tok.top[..] {
            gaps.push(format!("{:.3}", a - b));
        }
        if ids.len() == n {
            break;
        }
        tok = ring.step("greedy", pos, &[tok.id], &greedy)?;
    }
    eprintln!("gaps: [{}]", gaps.join(", "));
    println!("{ids:?}");
    println!("{}", info.tokenizer.decode(&ids)?);
    Ok(())
}
