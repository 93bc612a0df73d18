//! What GGUF file names and headers say about quantization: tags in names
//! (`model-Q4_K_M-00001-of-00003.gguf`) and llama.cpp's `general.file_type` numbers.

/// `(index, count)` of a split GGUF part named `…-00001-of-00003.gguf`.
pub fn split_part(name: &str) -> Option<(u32, u32)> {
    let stem = strip_gguf(base_name(name))?;
    let (head, count) = stem.rsplit_once("-of-")?;
    let (_, index) = head.rsplit_once('-')?;
    let digits = |s: &str| s.len() == 5 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(index) || !digits(count) {
        return None;
    }
    Some((index.parse().ok()?, count.parse().ok()?))
}

/// The name with the split suffix removed, so all parts of one model compare equal.
pub fn split_set(name: &str) -> String {
    match split_part(name) {
        Some(_) => {
            let stem = name.strip_suffix(".gguf").or(name.strip_suffix(".GGUF"));
            let stem = stem.unwrap_or(name);
            // "-00001-of-00003" is 15 characters.
            stem[..stem.len() - 15].to_string()
        }
        None => name.to_string(),
    }
}

pub fn is_gguf(name: &str) -> bool {
    strip_gguf(name).is_some()
}

/// Vision projectors and similar side files are not language models.
pub fn is_side_file(name: &str) -> bool {
    let lower = base_name(name).to_ascii_lowercase();
    lower.contains("mmproj") || lower.contains("imatrix")
}

/// Whether `name` carries the quantization `tag` (case-insensitive) as a whole token: `Q4_K`
/// matches `x-Q4_K.gguf` but not `x-Q4_K_M.gguf`. The directory counts too
/// (`Q4_K_M/x-00001-of-00002.gguf`).
pub fn has_quant(name: &str, tag: &str) -> bool {
    let hay = name.to_ascii_uppercase();
    let tag = tag.to_ascii_uppercase();
    if tag.is_empty() {
        return false;
    }
    let bytes = hay.as_bytes();
    let mut from = 0;
    while let Some(i) = hay[from..].find(&tag) {
        let start = from + i;
        let end = start + tag.len();
        let before_ok = start == 0 || !bytes[start - 1].is_ascii_alphanumeric();
        let after_ok =
            end == bytes.len() || !(bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_');
        if before_ok && after_ok {
            return true;
        }
        from = start + 1;
    }
    false
}

/// The quantization tag found in a GGUF file name (upper-cased), for listing what a repo offers.
pub fn quant_in_name(name: &str) -> Option<String> {
    let stem = split_set(base_name(name));
    let stem = strip_gguf(&stem).unwrap_or(&stem).to_string();
    stem.split(['-', '.'])
        .rev()
        .map(str::to_ascii_uppercase)
        .find(|t| looks_like_quant(t))
}

fn looks_like_quant(t: &str) -> bool {
    let digit_after = |p: &str| {
        t.strip_prefix(p)
            .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
    };
    matches!(t, "F16" | "F32" | "BF16" | "MXFP4" | "MXFP4_MOE")
        || digit_after("Q")
        || digit_after("IQ")
        || digit_after("TQ")
}

/// llama.cpp's name for a `general.file_type` value (`llama_ftype`).
pub fn file_type_name(ftype: u32) -> Option<&'static str> {
    Some(match ftype {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        19 => "IQ2_XXS",
        20 => "IQ2_XS",
        21 => "Q2_K_S",
        22 => "IQ3_XS",
        23 => "IQ3_XXS",
        24 => "IQ1_S",
        25 => "IQ4_NL",
        26 => "IQ3_S",
        27 => "IQ3_M",
        28 => "IQ2_S",
        29 => "IQ2_M",
        30 => "IQ4_XS",
        31 => "IQ1_M",
        32 => "BF16",
        36 => "TQ1_0",
        37 => "TQ2_0",
        38 => "MXFP4_MOE",
        39 => "NVFP4",
        40 => "Q1_0",
        _ => return None,
    })
}

fn base_name(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

fn strip_gguf(name: &str) -> Option<&str> {
    let n = name.len();
    (n > 5 && name[n - 5..].eq_ignore_ascii_case(".gguf")).then(|| &name[..n - 5])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_parts() {
        assert_eq!(split_part("m-Q4_K_M-00002-of-00003.gguf"), Some((2, 3)));
        assert_eq!(
            split_part("Q4_K_M/m-Q4_K_M-00001-of-00002.gguf"),
            Some((1, 2))
        );
        assert_eq!(split_part("m-Q4_K_M.gguf"), None);
        assert_eq!(split_part("m-1-of-3.gguf"), None);
        assert_eq!(split_set("m-Q4_K_M-00002-of-00003.gguf"), "m-Q4_K_M");
        assert_eq!(split_set("m.gguf"), "m.gguf");
    }

    #[test]
    fn quant_tags_match_whole_tokens() {
        assert!(has_quant(
            "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            "Q4_K_M"
        ));
        assert!(has_quant("gemma-3-270m-it-Q4_K_M.gguf", "q4_k_m"));
        assert!(!has_quant("gemma-3-270m-it-Q4_K_M.gguf", "Q4_K"));
        assert!(has_quant("x-Q4_K.gguf", "Q4_K"));
        assert!(!has_quant("x-IQ4_XS.gguf", "Q4_XS"));
        assert!(has_quant("Q8_0/x-00001-of-00002.gguf", "Q8_0"));
        assert!(has_quant("x-UD-Q4_K_XL.gguf", "UD-Q4_K_XL"));
        assert!(!has_quant("x-Q8_0.gguf", "Q8"));
    }

    #[test]
    fn quant_from_names() {
        assert_eq!(quant_in_name("a-q4_k_m.gguf").as_deref(), Some("Q4_K_M"));
        assert_eq!(
            quant_in_name("a-IQ2_XS-00001-of-00002.gguf").as_deref(),
            Some("IQ2_XS")
        );
        assert_eq!(
            quant_in_name("gemma-3-270m-it-F16.gguf").as_deref(),
            Some("F16")
        );
        assert_eq!(quant_in_name("model.gguf"), None);
    }

    #[test]
    fn file_types() {
        assert_eq!(file_type_name(15), Some("Q4_K_M"));
        assert_eq!(file_type_name(7), Some("Q8_0"));
        assert_eq!(file_type_name(32), Some("BF16"));
        assert_eq!(file_type_name(4), None);
    }
}
