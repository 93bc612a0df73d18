//! A stable-toolchain fuzz loop over every wire decoder: over a million random and mutated
//! inputs, none may panic, and none may make the decoder allocate more than the frame limit
//! (in fact nothing beyond a small multiple of the input). Deterministic (seeded), so a failure
//! reproduces.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
};

use exo_protocol::*;

/// Records the largest single allocation made while `TRACK` is on.
struct Tracking;

static TRACK: AtomicBool = AtomicBool::new(false);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if TRACK.load(Ordering::Relaxed) {
            LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if TRACK.load(Ordering::Relaxed) {
            LARGEST.fetch_max(new_size, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Tracking = Tracking;

/// SplitMix64: tiny, fast and good enough to drive a fuzz loop.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn seeds() -> Vec<Vec<u8>> {
    let plan = Plan {
        model: "qwen".into(),
        stages: vec![
            Stage {
                peer: "a".into(),
                layers: LayerRange::new(0, 12, 24),
            },
            Stage {
                peer: "b".into(),
                layers: LayerRange::new(12, 24, 24),
            },
        ],
    };
    let hidden = TensorFrame {
        dtype: TensorDType::F32,
        shape: vec![1, 2, 8],
        data: vec![3; 64],
    };
    let mut record = CapabilityRecord::new("peer");
    record.models.push(ModelOffer {
        id: "m".into(),
        n_layers: 24,
        bytes: 9,
        arch: "qwen2".into(),
        layer_bytes: vec![],
    });
    record.loaded.push(LoadedShard {
        model: "m".into(),
        layers: LayerRange::new(0, 12, 24),
    });
    record.files.push(FileOffer {
        repo: "o/r".into(),
        file: "f.gguf".into(),
        size: 1,
        sha256: "00".into(),
    });
    vec![
        encode(&ActivationRequest::new(
            1,
            "d",
            plan.clone(),
            3,
            vec![1, 2],
            Payload::Hidden(hidden),
            SamplingParams::default(),
        ))
        .unwrap(),
        encode(&ActivationRequest::new(
            1,
            "d",
            plan,
            0,
            vec![5; 9],
            Payload::Tokens,
            SamplingParams::default(),
        ))
        .unwrap(),
        encode(&ActivationResponse::new(Outcome::Token(TokenOut {
            id: 7,
            logprob: Some(-1.0),
            top: vec![(7, -1.0)],
        })))
        .unwrap(),
        encode(&ActivationResponse::error(
            ErrorKind::Unreachable,
            "b",
            "gone",
        ))
        .unwrap(),
        encode(&record).unwrap(),
        encode(&FileRequest::new(FileRequestBody::Chunk {
            repo: "o/r".into(),
            file: "f.gguf".into(),
            offset: 7,
            len: 1024,
        }))
        .unwrap(),
        encode(&FileRequest::new(FileRequestBody::Listing {
            repo: "o/r".into(),
            revision: "main".into(),
        }))
        .unwrap(),
        encode(&FileResponse::new(FileResponseBody::Chunk {
            data: vec![1; 32],
            size: 99,
        }))
        .unwrap(),
        encode(&FileResponse::new(FileResponseBody::Listing(Some(
            "{}".into(),
        ))))
        .unwrap(),
        encode(&FileRequest::new(FileRequestBody::Files {
            repo: "o/r".into(),
            revision: "main".into(),
        }))
        .unwrap(),
        encode(&FileResponse::new(FileResponseBody::Files(Some(
            RepoListing {
                commit: Some("abc".into()),
                files: vec![ListedFile {
                    name: "m.gguf".into(),
                    size: Some(99),
                    blob_id: None,
                    lfs: Some(LfsPointer {
                        sha256: "00".repeat(32),
                        size: 99,
                    }),
                }],
            },
        ))))
        .unwrap(),
    ]
}

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..1 + rng.below(6) {
        match rng.below(5) {
            0 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] = rng.next() as u8;
            }
            1 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] ^= 1 << rng.below(8);
            }
            2 => {
                let i = rng.below(b.len() + 1);
                b.insert(i, rng.next() as u8);
            }
            3 if !b.is_empty() => {
                let i = rng.below(b.len());
                b.truncate(i);
            }
            // CBOR heads with huge lengths: arrays, maps, byte and text strings.
            _ => {
                let i = rng.below(b.len() + 1);
                let head = [0x9b, 0xbb, 0x5b, 0x7b][rng.below(4)];
                b.splice(i..i, [head, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
            }
        }
    }
    b
}

fn decode_all(bytes: &[u8]) {
    if let Ok(r) = decode::<ActivationRequest>(bytes, MAX_FRAME_BYTES) {
        if let Payload::Hidden(f) = &r.payload {
            let _ = f.validate();
        }
        let _ = r.plan.validate();
    }
    let _ = decode::<ActivationResponse>(bytes, MAX_FRAME_BYTES);
    let _ = decode::<CapabilityRecord>(bytes, capability::MAX_RECORD_BYTES);
    let _ = decode::<TensorFrame>(bytes, MAX_FRAME_BYTES);
    let _ = decode::<FileRequest>(bytes, 4096);
    let _ = decode::<FileResponse>(bytes, 2 * MAX_CHUNK_BYTES as usize);
}

#[test]
fn a_million_random_and_mutated_inputs_neither_panic_nor_overallocate() {
    let mut rng = Rng(0x5eed_0e0c_0001);
    let seeds = seeds();
    let mut inputs = 0usize;
    let mut worst = 0usize;
    while inputs < 1_000_000 {
        let bytes = if rng.below(4) == 0 {
            (0..rng.below(256)).map(|_| rng.next() as u8).collect()
        } else {
            let seed = &seeds[rng.below(seeds.len())];
            mutate(&mut rng, seed)
        };
        LARGEST.store(0, Ordering::Relaxed);
        TRACK.store(true, Ordering::Relaxed);
        decode_all(&bytes);
        TRACK.store(false, Ordering::Relaxed);
        let largest = LARGEST.load(Ordering::Relaxed);
        // serde sizes collections cautiously; nothing should come near the frame limit.
        assert!(
            largest <= MAX_FRAME_BYTES && largest <= (1 << 20) + 64 * bytes.len(),
            "decoding {} bytes allocated {largest} bytes at once: {bytes:02x?}",
            bytes.len()
        );
        worst = worst.max(largest);
        inputs += 1;
    }
    eprintln!("{inputs} inputs through 6 decoders, largest single allocation {worst} bytes");
}
