//! GGUF tokenizers against llama.cpp's token ids (tests/fixtures/llamacpp-tokens.jsonl, made
//! with `llama-tokenize --ids`) and encode/decode round trips on mixed text.

mod common;

use exo_engine::ModelInfo;

#[derive(serde::Deserialize)]
struct Case {
    model: String,
    text: String,
    ids: Vec<u32>,
}

fn check(file: &str) {
    let info = ModelInfo::load(&common::test_model(file)).unwrap();
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/llamacpp-tokens.jsonl"
    );
    let cases: Vec<Case> = std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|c: &Case| c.model == file)
        .collect();
    assert!(cases.len() >= 8);
    for case in cases {
        let ids = info.tokenizer.encode(&case.text, true).unwrap();
        assert_eq!(ids, case.ids, "{file}: token ids of {:?}", case.text);
        let has_special = case.text.contains("<|") || case.text.contains("<start_of_turn>");
        if !has_special {
            let body: Vec<u32> = ids
                .iter()
                .copied()
                .filter(|&t| Some(t) != info.tokenizer.bos())
                .collect();
            assert_eq!(
                info.tokenizer.decode(&body).unwrap(),
                case.text,
                "{file}: round trip"
            );
        }
    }
}

#[test]
fn gemma_tokenizer_matches_llama_cpp() {
    check(common::GEMMA);
}

#[test]
fn qwen_tokenizer_matches_llama_cpp() {
    check(common::QWEN);
}

#[test]
fn end_of_generation_tokens_are_known() {
    let qwen = ModelInfo::load(&common::test_model(common::QWEN)).unwrap();
    let im_end = qwen.tokenizer.encode("<|im_end|>", false).unwrap();
    assert_eq!(im_end.len(), 1);
    assert!(qwen.tokenizer.is_eog(im_end[0]));
    let gemma = ModelInfo::load(&common::test_model(common::GEMMA)).unwrap();
    let eot = gemma.tokenizer.encode("<end_of_turn>", false).unwrap();
    assert!(gemma.tokenizer.is_eog(eot[0]));
    assert!(gemma.tokenizer.is_eog(1), "<eos>");
}
