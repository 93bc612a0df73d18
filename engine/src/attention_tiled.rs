//! ggml's tiled flash attention (`ggml_compute_forward_flash_attn_ext_tiled` in ggml-cpu's
//! ops.cpp), the path llama.cpp's CPU backend takes for a batch of at least [`Q_TILE`] queries
//! (prompts, perplexity): f32 queries against the f16 cache widened to f32, keys in tiles of
//! [`KV_TILE`] from position 0, every score a chain of fused multiply-adds over the head, an
//! online softmax per tile with ggml's `expf` and sums, and an f32 value accumulator fed by a
//! chain of fused multiply-adds over the tile's keys.
//!
//! A query's result does not depend on which other queries share its tile (a tile none of whose
//! keys it sees leaves it unchanged), so the work is split by head and 64 consecutive queries.

use rayon::prelude::*;

use crate::{
    attention::AttnShape,
    ggml_vec::{self, VecPath},
};

/// Queries per tile; llama.cpp takes this path for batches of at least this many.
pub const Q_TILE: usize = 64;
/// Keys per tile, counted from position 0.
const KV_TILE: usize = 64;
/// Queries computed together, sharing every key and value load.
const ROWS: usize = 4;
/// Lanes of the score and accumulator loops.
const LANES: usize = 16;

/// Causal attention of `seq` queries (positions `pos..pos+seq`, `q` as `[n_head, seq,
/// head_dim]`) over `keys` / `values` (per KV head, rows of `head_dim`, f16-rounded, at least
/// `pos + seq` of them). Returns `[seq, n_head * head_dim]`.
pub fn attend(
    q: &[f32],
    keys: &[Vec<f32>],
    values: &[Vec<f32>],
    pos: usize,
    seq: usize,
    s: AttnShape<'_>,
) -> Vec<f32> {
    let (nh, hd) = (s.n_head, s.head_dim);
    let rep = nh / s.n_kv_head;
    let tiles = seq.div_ceil(Q_TILE);
    let path = ggml_vec::path();
    let blocks: Vec<Vec<f32>> = (0..nh * tiles)
        .into_par_iter()
        .map(|item| {
            let (h, t) = (item / tiles, item % tiles);
            let i0 = t * Q_TILE;
            let rows = Q_TILE.min(seq - i0);
            let qh = &q[(h * seq + i0) * hd..(h * seq + i0 + rows) * hd];
            let sink = s.sinks.map(|v| v[h]);
            tile(
                path,
                qh,
                &keys[h / rep],
                &values[h / rep],
                pos + i0,
                s,
                sink,
            )
        })
        .collect();
    let mut out = vec![0f32; seq * nh * hd];
    for (item, block) in blocks.iter().enumerate() {
        let (h, i0) = (item / tiles, item % tiles * Q_TILE);
        for (r, row) in block.chunks_exact(hd).enumerate() {
            out[((i0 + r) * nh + h) * hd..][..hd].copy_from_slice(row);
        }
    }
    out
}

/// Outputs of consecutive queries of one head (`q`: rows of `head_dim`), the first at position
/// `p0`.
fn tile(
    path: VecPath,
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    p0: usize,
    s: AttnShape<'_>,
    sink: Option<f32>,
) -> Vec<f32> {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features.
        return unsafe { x86::tile(path, q, keys, values, p0, s, sink) };
    }
    // NEON `ggml_v_expf`, four lanes at a time (the tile's width is a multiple of 4); the
    // score and accumulator loops vectorize as they are (NEON and FMA are baseline).
    #[cfg(target_arch = "aarch64")]
    if path == VecPath::Neon {
        return tile_body(path, q, keys, values, p0, s, sink, &|p: &mut [f32], m| {
            crate::quant::arm_vec::exp_shifted(p, m);
        });
    }
    tile_body(path, q, keys, values, p0, s, sink, &|p: &mut [f32], m| {
        p.iter_mut().for_each(|x| *x = ggml_vec::expf(path, *x - m))
    })
}

/// [`tile`]'s body, with `exp_shifted(p, m)` setting `p[i] = expf(p[i] - m)`; `sink` is the
/// head's attention sink logit.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn tile_body(
    path: VecPath,
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    p0: usize,
    s: AttnShape<'_>,
    sink: Option<f32>,
    exp_shifted: &dyn Fn(&mut [f32], f32),
) -> Vec<f32> {
    let hd = s.head_dim;
    let rows = q.len() / hd;
    let mut acc = vec![0f32; rows * hd];
    let mut max = [f32::NEG_INFINITY; Q_TILE];
    let mut sum = [0f32; Q_TILE];
    let first_key = |p: usize| s.window.map_or(0, |w| (p + 1).saturating_sub(w));
    let last = p0 + rows - 1;
    // Keys transposed (`kt[d][k]`) and values, zero past the last key.
    let mut kt = vec![0f32; hd * KV_TILE];
    let mut vt = vec![0f32; KV_TILE * hd];
    let mut qb = vec![0f32; ROWS * hd];
    let mut p = [[0f32; KV_TILE]; ROWS];
    for c in (first_key(p0) / KV_TILE * KV_TILE..=last).step_by(KV_TILE) {
        let n = KV_TILE.min(last + 1 - c);
        kt.fill(0.0);
        vt.fill(0.0);
        for k in 0..n {
            let key = &keys[(c + k) * hd..][..hd];
            for (d, &x) in key.iter().enumerate() {
                kt[d * KV_TILE + k] = x;
            }
        }
        vt[..n * hd].copy_from_slice(&values[c * hd..(c + n) * hd]);
        for r0 in (0..rows).step_by(ROWS) {
            let nr = ROWS.min(rows - r0);
            qb.fill(0.0);
            qb[..nr * hd].copy_from_slice(&q[r0 * hd..(r0 + nr) * hd]);
            scores(&kt, &qb, hd, &mut p);
            for (r, pr) in p.iter_mut().enumerate().take(nr) {
                let row = r0 + r;
                let at = p0 + row;
                let (lo, hi) = (first_key(at).max(c), at.min(c + KV_TILE - 1));
                if lo > hi {
                    // No key of this tile is visible: ggml's row adds nothing.
                    pr.fill(0.0);
                    continue;
                }
                for (k, x) in pr.iter_mut().enumerate() {
                    *x = if (lo..=hi).contains(&(c + k)) {
                        *x * s.scale
                    } else {
                        f32::NEG_INFINITY
                    };
                }
                let tile_max = pr
                    .iter()
                    .fold(f32::NEG_INFINITY, |m, &x| if m > x { m } else { x });
                let old = max[row];
                let new = old.max(tile_max);
                if new > old {
                    let ms = (old - new).exp();
                    acc[row * hd..][..hd].iter_mut().for_each(|a| *a *= ms);
                    sum[row] *= ms;
                }
                max[row] = new;
                exp_shifted(pr, new);
                sum[row] = (sum[row] as f64 + ggml_vec::softmax_sum(path, pr)) as f32;
            }
            for pr in p.iter_mut().skip(nr) {
                pr.fill(0.0);
            }
            accumulate(&mut acc[r0 * hd..(r0 + nr) * hd], &p, &vt, hd);
        }
    }
    for (row, a) in acc.chunks_exact_mut(hd).enumerate() {
        if let Some(sk) = sink {
            sum[row] = crate::attention::add_sink(sk, max[row], sum[row], a);
        }
        let inv = if sum[row] == 0.0 { 0.0 } else { 1.0 / sum[row] };
        a.iter_mut().for_each(|x| *x *= inv);
    }
    acc
}

/// `p[r][k] = sum_d q[r][d] * k[d][k]`, one fused multiply-add at a time in `d` order from 0.
#[inline(always)]
fn scores(kt: &[f32], q: &[f32], hd: usize, p: &mut [[f32; KV_TILE]; ROWS]) {
    for kc in (0..KV_TILE).step_by(LANES) {
        let mut a = [[0f32; LANES]; ROWS];
        for d in 0..hd {
            let k: &[f32; LANES] = kt[d * KV_TILE + kc..][..LANES].try_into().unwrap();
            for (r, ar) in a.iter_mut().enumerate() {
                let qd = q[r * hd + d];
                for (x, &kv) in ar.iter_mut().zip(k) {
                    *x = kv.mul_add(qd, *x);
                }
            }
        }
        for (pr, ar) in p.iter_mut().zip(&a) {
            pr[kc..kc + LANES].copy_from_slice(ar);
        }
    }
}

/// `acc[r][d] += sum_k p[r][k] * v[k][d]`, one fused multiply-add at a time in `k` order, for
/// the rows `acc` holds.
#[inline(always)]
fn accumulate(acc: &mut [f32], p: &[[f32; KV_TILE]; ROWS], vt: &[f32], hd: usize) {
    let nr = acc.len() / hd;
    let whole = hd / LANES * LANES;
    for dc in (0..whole).step_by(LANES) {
        let mut a = [[0f32; LANES]; ROWS];
        for (r, ar) in a.iter_mut().enumerate().take(nr) {
            ar.copy_from_slice(&acc[r * hd + dc..][..LANES]);
        }
        for k in 0..KV_TILE {
            let v: &[f32; LANES] = vt[k * hd + dc..][..LANES].try_into().unwrap();
            for (ar, pr) in a.iter_mut().zip(p) {
                let w = pr[k];
                for (x, &vv) in ar.iter_mut().zip(v) {
                    *x = vv.mul_add(w, *x);
                }
            }
        }
        for (r, ar) in a.iter().enumerate().take(nr) {
            acc[r * hd + dc..][..LANES].copy_from_slice(ar);
        }
    }
    for d in whole..hd {
        for (r, pr) in p.iter().enumerate().take(nr) {
            let mut x = acc[r * hd + d];
            for (k, &w) in pr.iter().enumerate() {
                x = vt[k * hd + d].mul_add(w, x);
            }
            acc[r * hd + d] = x;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::*;

    /// [`tile_body`] compiled with FMA (the loops vectorize), `expf` eight lanes at a time on the
    /// 256-bit path.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile(
        path: VecPath,
        q: &[f32],
        keys: &[f32],
        values: &[f32],
        p0: usize,
        s: AttnShape<'_>,
        sink: Option<f32>,
    ) -> Vec<f32> {
        let exp: &dyn Fn(&mut [f32], f32) = match path {
            VecPath::Avx2 => &|p: &mut [f32], m| {
                let mv = _mm256_set1_ps(m);
                for c in p.chunks_exact_mut(8) {
                    let x = _mm256_loadu_ps(c.as_ptr());
                    _mm256_storeu_ps(c.as_mut_ptr(), expf8(_mm256_sub_ps(x, mv)));
                }
            },
            VecPath::Avx512 => &|p: &mut [f32], m| {
                p.iter_mut()
                    .for_each(|x| *x = ggml_vec::expf_avx512(*x - m))
            },
            VecPath::Neon => &|p: &mut [f32], m| {
                p.iter_mut()
                    .for_each(|x| *x = ggml_vec::expf(VecPath::Neon, *x - m))
            },
        };
        tile_body(path, q, keys, values, p0, s, sink, exp)
    }

    /// ggml's 256-bit `ggml_v_expf`, instruction for instruction.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn expf8(x: __m256) -> __m256 {
        let r = _mm256_set1_ps(f32::from_bits(0x4b40_0000));
        let z = _mm256_fmadd_ps(x, _mm256_set1_ps(f32::from_bits(0x3fb8_aa3b)), r);
        let n = _mm256_sub_ps(z, r);
        let b = _mm256_fnmadd_ps(
            n,
            _mm256_set1_ps(f32::from_bits(0x35bf_be8e)),
            _mm256_fnmadd_ps(n, _mm256_set1_ps(f32::from_bits(0x3f31_7200)), x),
        );
        let e = _mm256_slli_epi32::<23>(_mm256_castps_si256(z));
        let k = _mm256_castsi256_ps(_mm256_add_epi32(
            e,
            _mm256_castps_si256(_mm256_set1_ps(1.0)),
        ));
        let abs_n = _mm256_andnot_ps(_mm256_set1_ps(-0.0), n);
        let c = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_GT_OQ>(abs_n, _mm256_set1_ps(126.0)));
        let u = _mm256_mul_ps(b, b);
        let set = |bits: u32| _mm256_set1_ps(f32::from_bits(bits));
        let j = _mm256_fmadd_ps(
            _mm256_fmadd_ps(
                _mm256_fmadd_ps(set(0x3c07_2010), b, set(0x3d2b_9f17)),
                u,
                _mm256_fmadd_ps(set(0x3e2a_af33), b, set(0x3eff_fedb)),
            ),
            u,
            _mm256_mul_ps(set(0x3f7f_fff6), b),
        );
        if _mm256_movemask_ps(_mm256_castsi256_ps(c)) == 0 {
            return _mm256_fmadd_ps(j, k, k);
        }
        let g = _mm256_and_si256(
            _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LE_OQ>(n, _mm256_setzero_ps())),
            _mm256_set1_epi32(0x8200_0000u32 as i32),
        );
        let s1 = _mm256_castsi256_ps(_mm256_add_epi32(g, _mm256_set1_epi32(0x7f00_0000)));
        let s2 = _mm256_castsi256_ps(_mm256_sub_epi32(e, g));
        let d = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_GT_OQ>(abs_n, _mm256_set1_ps(192.0)));
        _mm256_or_ps(
            _mm256_and_ps(_mm256_castsi256_ps(d), _mm256_mul_ps(s1, s1)),
            _mm256_andnot_ps(
                _mm256_castsi256_ps(d),
                _mm256_or_ps(
                    _mm256_and_ps(
                        _mm256_castsi256_ps(c),
                        _mm256_mul_ps(_mm256_fmadd_ps(s2, j, s2), s1),
                    ),
                    _mm256_andnot_ps(_mm256_castsi256_ps(c), _mm256_fmadd_ps(k, j, k)),
                ),
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::round_f16;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    /// ggml's tiled loop written plainly, one query at a time over every key tile of the cache.
    fn plain(
        q: &[f32],
        keys: &[f32],
        values: &[f32],
        p: usize,
        s: AttnShape<'_>,
        sink: Option<f32>,
    ) -> Vec<f32> {
        let hd = s.head_dim;
        let path = ggml_vec::path();
        let first = s.window.map_or(0, |w| (p + 1).saturating_sub(w));
        let (mut m, mut sum) = (f32::NEG_INFINITY, 0f32);
        let mut acc = vec![0f32; hd];
        let len = keys.len() / hd;
        for c in (0..len).step_by(KV_TILE) {
            let mut kq = [f32::NEG_INFINITY; KV_TILE];
            for (k, x) in kq.iter_mut().enumerate() {
                let j = c + k;
                if j >= first && j <= p && j < len {
                    let mut d = 0f32;
                    for (i, &qi) in q.iter().enumerate() {
                        d = keys[j * hd + i].mul_add(qi, d);
                    }
                    *x = d * s.scale;
                }
            }
            let tm = kq.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            if tm == f32::NEG_INFINITY {
                continue;
            }
            let new = m.max(tm);
            if new > m {
                let ms = (m - new).exp();
                acc.iter_mut().for_each(|a| *a *= ms);
                sum *= ms;
            }
            m = new;
            let e: Vec<f32> = kq.iter().map(|&x| ggml_vec::expf(path, x - m)).collect();
            sum = (sum as f64 + ggml_vec::softmax_sum(path, &e)) as f32;
            for (k, &w) in e.iter().enumerate() {
                if c + k < len {
                    for (a, &v) in acc.iter_mut().zip(&values[(c + k) * hd..]) {
                        *a = v.mul_add(w, *a);
                    }
                }
            }
        }
        if let Some(sk) = sink {
            // ggml's sink step, written out.
            if sk > m {
                let ms = (m - sk).exp();
                acc.iter_mut().for_each(|a| *a *= ms);
                sum = sum.mul_add(ms, 1.0);
            } else {
                sum += (sk - m).exp();
            }
        }
        acc.iter().map(|a| a * (1.0 / sum)).collect()
    }

    #[test]
    fn tiles_equal_the_plain_loop_bit_for_bit() {
        // Sinks below and above the scores (the large ones rescale the accumulator).
        let sinks = [0.3f32, -2.0, 25.0, 1.5, -0.5, 60.0];
        for (hd, window, pos, seq, sinks) in [
            (128, None, 0, 150, None),
            (64, Some(70), 30, 131, None),
            (80, None, 5, 64, None),
            (64, Some(40), 3, 100, Some(&sinks[..])),
        ] {
            let s = AttnShape {
                n_head: 6,
                n_kv_head: 2,
                head_dim: hd,
                scale: 1.0 / (hd as f32).sqrt(),
                window,
                sinks,
            };
            let len = pos + seq;
            let rnd =
                |n, seed| -> Vec<f32> { values(n, seed).into_iter().map(round_f16).collect() };
            let keys: Vec<Vec<f32>> = (0..2).map(|h| rnd(len * hd, 10 + h)).collect();
            let vals: Vec<Vec<f32>> = (0..2).map(|h| rnd(len * hd, 20 + h)).collect();
            let q: Vec<f32> = values(6 * seq * hd, 3).iter().map(|x| x * 3.0).collect();
            let got = attend(&q, &keys, &vals, pos, seq, s);
            for h in 0..6 {
                for i in 0..seq {
                    let qr = &q[(h * seq + i) * hd..][..hd];
                    let sink = sinks.map(|v| v[h]);
                    let want = plain(qr, &keys[h / 3], &vals[h / 3], pos + i, s, sink);
                    let row = &got[(i * 6 + h) * hd..][..hd];
                    assert_eq!(
                        row,
                        &want[..],
                        "head {h} query {i} (hd {hd}, window {window:?})"
                    );
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn eight_lane_expf_equals_the_scalar_form() {
        if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
            return;
        }
        let mut xs: Vec<f32> = (-3000..3000).map(|i| i as f32 * 0.037).collect();
        xs.extend([
            f32::NEG_INFINITY,
            -150.0,
            -100.0,
            -88.0,
            88.5,
            100.0,
            0.0,
            -0.0,
        ]);
        xs.resize(xs.len().next_multiple_of(8), 1.0);
        for c in xs.chunks_exact(8) {
            let mut got = [0f32; 8];
            // SAFETY: checked the features.
            unsafe {
                use std::arch::x86_64::*;
                _mm256_storeu_ps(got.as_mut_ptr(), x86::expf8(_mm256_loadu_ps(c.as_ptr())));
            }
            for (g, &x) in got.iter().zip(c) {
                assert_eq!(g.to_bits(), ggml_vec::expf_avx2(x).to_bits(), "{x}");
            }
        }
    }
}
