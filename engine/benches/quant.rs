//! Throughput of the quantized matmul kernels per instruction set level, on the shapes of the
//! test models. `cargo bench -p exo-engine --bench quant` (set RAYON_NUM_THREADS to pick the
//! thread count; 1 by default here).

use std::{borrow::Cow, sync::Arc, time::Instant};

use candle_core::{
    quantized::{GgmlDType, QStorage, QTensor},
    Device, Tensor,
};
use exo_engine::quant::{ActType, Activations, Isa, QuantMatMul};

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

fn main() {
    if std::env::var("RAYON_NUM_THREADS").is_err() {
        std::env::set_var("RAYON_NUM_THREADS", "1");
    }
    let filter = std::env::args().nth(1).filter(|a| !a.starts_with('-'));
    let shapes = [
        (GgmlDType::Q5_0, 4864, 896),
        (GgmlDType::Q8_0, 896, 896),
        (GgmlDType::Q4K, 896, 4864),
        (GgmlDType::Q6K, 896, 4864),
        // The output head: larger than any cache, so this one measures memory bandwidth.
        (GgmlDType::Q8_0, 151936, 896),
    ];
    for (dtype, n, k) in shapes {
        if let Some(f) = &filter {
            if !format!("{dtype:?}").contains(f.as_str()) {
                continue;
            }
        }
        let w = QuantMatMul::from_arc(weights(dtype, n, k)).unwrap();
        let ty = w.weight_type().unwrap();
        for m in [1usize, 128] {
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
