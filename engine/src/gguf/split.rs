//! Names of multi-part GGUF files, as llama.cpp's `llama-gguf-split` writes them:
//! `PREFIX-00001-of-00005.gguf` … `PREFIX-00005-of-00005.gguf` (parts numbered from 1).

/// `split.count`, `split.no` (from 0) and `split.tensors.count`: the keys every part carries.
pub const KEY_COUNT: &str = "split.count";
pub const KEY_NO: &str = "split.no";
pub const KEY_TENSORS: &str = "split.tensors.count";

/// A part's file name, `no` counted from 1.
pub fn part_name(prefix: &str, no: u32, count: u32) -> String {
    format!("{prefix}-{no:05}-of-{count:05}.gguf")
}

/// The prefix, part number (from 1) and part count of a file named like a split part.
pub fn parse_part_name(file_name: &str) -> Option<(&str, u32, u32)> {
    let stem = file_name.strip_suffix(".gguf")?;
    let (rest, count) = stem.rsplit_once("-of-")?;
    let (prefix, no) = rest.rsplit_once('-')?;
    let digits = |s: &str| s.len() == 5 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(no) || !digits(count) || prefix.is_empty() {
        return None;
    }
    let (no, count) = (no.parse().ok()?, count.parse().ok()?);
    (1..=count).contains(&no).then_some((prefix, no, count))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_names_round_trip() {
        assert_eq!(
            part_name("Qwen3-30B-A3B-Q4_K_M", 2, 5),
            "Qwen3-30B-A3B-Q4_K_M-00002-of-00005.gguf"
        );
        assert_eq!(
            parse_part_name("Qwen3-30B-A3B-Q4_K_M-00002-of-00005.gguf"),
            Some(("Qwen3-30B-A3B-Q4_K_M", 2, 5))
        );
        assert_eq!(
            parse_part_name("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"),
            None
        );
        assert_eq!(parse_part_name("m-00006-of-00005.gguf"), None);
        assert_eq!(parse_part_name("m-1-of-2.gguf"), None);
        assert_eq!(parse_part_name("-00001-of-00002.gguf"), None);
    }
}
