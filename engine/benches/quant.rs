//! Throughput of the quantized matmul kernels per instruction set level, on the shapes of the
//! test models (and of qwen2.5 1.5B: hidden 1536, FFN 8960). `cargo bench -p exo-engine --bench
//! quant [TYPE]` (set RAYON_NUM_THREADS to pick the thread count; 1 by default here).

use std::{borrow::Cow, sync::Arc, time::Instant};

use candle_core::{
    quantized::{GgmlDType, QStorage, QTensor},
    Device, Tensor,
};
use exo_engine::quant::{ActType, Activations, Isa, QuantMatMul, WeightType};

fn weights(dtype: GgmlDType, n: usize, k: usize) -> Arc<QTensor> {
    // Quantize a smooth pseudo-random matrix with candle, like a real weight.
    let v: Vec<f32> = (0..n * k)
        .map(|i| ((i as f32 * 0.618_034).fract() - 0.5) * 0.1)
        .collect();
    let t = Tensor::from_vec(v, (n, k), &Device::Cpu).unwrap();
    let q = QTensor::quantize(&t, dtype).unwrap();
    let data = q.data().unwrap().into_owned();
    let storage = QStorage::from_data(Cow::Owned(data), &Device::Cpu, dtype).unwrap();
    Arc::new(QTensor::new(storage, (n, k)).unwrap())
}

/// Blocks of a type candle cannot quantize to: pseudo-random bytes with a small f16 scale in
/// the first two bytes (every type here starts with its scale).
fn random_blocks(ty: WeightType, n: usize, k: usize) -> Vec<u8> {
    let (size, count) = (ty.block_bytes(), n * k / ty.block_len());
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut bytes: Vec<u8> = (0..size * count)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    for b in bytes.chunks_exact_mut(size) {
        b[..2].copy_from_slice(&half::f16::from_f32(0.01).to_le_bytes());
    }
    bytes
}

fn main() {
    if std::env::var("RAYON_NUM_THREADS").is_err() {
        std::env::set_var("RAYON_NUM_THREADS", "1");
    }
    let filter = std::env::args().nth(1).filter(|a| !a.starts_with('-'));
    let mut shapes = vec![
        (WeightType::Q5_0, 4864, 896),
        (WeightType::Q8_0, 896, 896),
        (WeightType::Q4K, 896, 4864),
        (WeightType::Q6K, 896, 4864),
        (WeightType::Q4K, 8960, 1536),
        (WeightType::Q6K, 1536, 8960),
        (WeightType::Q2K, 8960, 1536),
        (WeightType::Q3K, 8960, 1536),
        (WeightType::IQ4NL, 8960, 1536),
        (WeightType::IQ4XS, 8960, 1536),
        // The output head: larger than any cache, so this one measures memory bandwidth.
        (WeightType::Q8_0, 151936, 896),
    ];
    // EXO_BENCH_SHAPE=TYPE,n,k measures one more shape (e.g. to tell cache effects apart).
    if let Ok(v) = std::env::var("EXO_BENCH_SHAPE") {
        let p: Vec<&str> = v.split(',').collect();
        let ty = WeightType::ALL
            .into_iter()
            .find(|t| format!("{t:?}") == p[0])
            .expect("a weight type");
        shapes.insert(0, (ty, p[1].parse().unwrap(), p[2].parse().unwrap()));
    }
    for (ty, n, k) in shapes {
        if let Some(f) = &filter {
            if !format!("{ty:?}").contains(f.as_str()) {
                continue;
            }
        }
        let w = match ty.candle_dtype() {
            Some(dtype) => QuantMatMul::from_arc(weights(dtype, n, k)).unwrap(),
            None => QuantMatMul::from_blocks(ty, &random_blocks(ty, n, k), n, k).unwrap(),
        };
        let dtype = ty;
        for m in [1usize, 128] {
            if std::env::var("EXO_BENCH_PROMPT_ONLY").is_ok() && m == 1 {
                continue;
            }
            if n > 100_000 && m > 1 {
                continue;
            }
            let x: Vec<f32> = (0..m * k).map(|i| ((i as f32) * 0.37).sin()).collect();
            let acts = Activations::quantize(&x, m, k, ty.act_type());
            let mut out = vec![0f32; m * n];
            for isa in Isa::available() {
                if isa == Isa::Scalar && m > 1 {
                    continue;
                }
                let reps = if n > 100_000 {
                    10
                } else if m == 1 {
                    200
                } else {
                    4
                };
                w.matmul_into(&acts, &mut out, isa).unwrap();
                let t = Instant::now();
                for _ in 0..reps {
                    w.matmul_into(&acts, &mut out, isa).unwrap();
                }
                let s = t.elapsed().as_secs_f64() / reps as f64;
                let bytes = w.weight_bytes() as f64;
                println!(
                    "{dtype:?} n={n} k={k} m={m:3} {isa:?}: {:8.1} us  {:6.1} GMAC/s  {:5.1} GB/s of weights",
                    s * 1e6,
                    (m * n * k) as f64 / s / 1e9,
                    bytes / s / 1e9
                );
            }
        }
        let x: Vec<f32> = (0..128 * k).map(|i| ((i as f32) * 0.37).sin()).collect();
        let t = Instant::now();
        let _ = Activations::quantize(&x, 128, k, ty.act_type());
        println!(
            "  quantize 128 x {k}: {:.1} us",
            t.elapsed().as_secs_f64() * 1e6
        );
    }
    let _ = ActType::Q8_0;
}
