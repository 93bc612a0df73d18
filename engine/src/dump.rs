//! Debugging numerics against llama.cpp: with `EXO_DUMP_DIR` set, the forward pass writes its
//! intermediate tensors there as raw f32 under llama.cpp's graph names (`attn_norm-3`,
//! `kqv_out-3`, `ffn_out-3`, `l_out-3`, ...), in ggml's element order, so that
//! scripts/compare-dumps.py can put them beside scripts/llamacpp-dump.sh's and show the first
//! tensor where the two differ. Each forward pass overwrites the previous one's files. Off (one
//! cached check) when the variable is unset.

use std::{cell::Cell, path::PathBuf, sync::OnceLock};

use candle_core::Tensor;

fn dir() -> Option<&'static PathBuf> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::var_os("EXO_DUMP_DIR").filter(|d| !d.is_empty())?;
        let d = PathBuf::from(d);
        if let Err(e) = std::fs::create_dir_all(&d) {
            tracing::warn!("EXO_DUMP_DIR {}: {e}; not dumping", d.display());
            return None;
        }
        Some(d)
    })
    .as_ref()
}

thread_local! {
    static LAYER: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Whether dumps are on.
pub fn enabled() -> bool {
    dir().is_some()
}

/// The (global) layer the next dumps belong to; None for tensors outside the layers.
pub fn set_layer(layer: Option<usize>) {
    if enabled() {
        LAYER.with(|l| l.set(layer));
    }
}

/// Writes `t` as `NAME-LAYER.f32` (or `NAME.f32` outside the layers). `t` must be in ggml's
/// order, the innermost dimension last.
pub fn tensor(name: &str, t: &Tensor) {
    let Some(dir) = dir() else { return };
    let name = match LAYER.with(|l| l.get()) {
        Some(l) => format!("{name}-{l}"),
        None => name.to_string(),
    };
    let values = t
        .contiguous()
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_dtype(candle_core::DType::F32))
        .and_then(|t| t.to_vec1::<f32>());
    match values {
        Ok(v) => {
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            let path = dir.join(format!("{name}.f32"));
            if let Err(e) = std::fs::write(&path, bytes) {
                tracing::warn!("dump {}: {e}", path.display());
            }
        }
        Err(e) => tracing::warn!("dump {name}: {e}"),
    }
}
