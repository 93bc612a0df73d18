//! Prints the token ids of a text file: `cargo run --release -p exo-engine --example tokenize -- MODEL FILE`.
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let info = exo_engine::ModelInfo::load(std::path::Path::new(&args[0])).unwrap();
    let text = std::fs::read_to_string(&args[1]).unwrap();
    println!("{:?}", info.tokenizer.encode(&text, true).unwrap());
}
