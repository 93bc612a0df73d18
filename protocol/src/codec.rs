//! CBOR encoding with explicit size limits and version checks.

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::PROTOCOL_VERSION;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("frame of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge { len: usize, limit: usize },
    #[error("malformed CBOR: {0}")]
    Malformed(String),
    #[error("unsupported protocol version {got} (this node speaks version {PROTOCOL_VERSION})")]
    Version { got: u16 },
    #[error("cannot encode: {0}")]
    Encode(String),
}

/// Encodes any wire type as CBOR.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    cbor4ii::serde::to_vec(Vec::new(), value).map_err(|e| CodecError::Encode(e.to_string()))
}

/// Every message is a map with a `v` field; reading just that first lets an unknown version be
/// reported as such rather than as a confusing field error.
#[derive(Deserialize)]
struct VersionProbe {
    v: u16,
}

/// Decodes a versioned wire type, refusing frames over `limit` bytes and other versions.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, CodecError> {
    if bytes.len() > limit {
        return Err(CodecError::TooLarge {
            len: bytes.len(),
            limit,
        });
    }
    let probe: VersionProbe =
        cbor4ii::serde::from_slice(bytes).map_err(|e| CodecError::Malformed(e.to_string()))?;
    if probe.v != PROTOCOL_VERSION {
        return Err(CodecError::Version { got: probe.v });
    }
    cbor4ii::serde::from_slice(bytes).map_err(|e| CodecError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::*;
    use proptest::prelude::*;

    fn plan() -> Plan {
        Plan {
            model: "qwen".into(),
            stages: vec![
                Stage {
                    peer: "a".into(),
                    layers: LayerRange::new(0, 10, 24),
                },
                Stage {
                    peer: "b".into(),
                    layers: LayerRange::new(10, 24, 24),
                },
            ],
        }
    }

    fn roundtrip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(v: &T) {
        let bytes = encode(v).unwrap();
        let back: T = decode(&bytes, usize::MAX).unwrap();
        assert_eq!(&back, v);
    }

    #[test]
    fn every_message_type_round_trips() {
        let hidden = TensorFrame {
            dtype: TensorDType::F32,
            shape: vec![1, 2, 3],
            data: (0..24).collect(),
        };
        for payload in [
            Payload::Tokens,
            Payload::Hidden(hidden.clone()),
            Payload::Release,
        ] {
            roundtrip(&ActivationRequest::new(
                7,
                "driver",
                plan(),
                3,
                vec![1, 2, 151645],
                payload,
                SamplingParams::default(),
            ));
        }
        for outcome in [
            Outcome::Token(TokenOut {
                id: 42,
                logprob: Some(-0.5),
                top: vec![(42, -0.5), (7, -1.5)],
            }),
            Outcome::Released,
            Outcome::Error {
                kind: ErrorKind::Unreachable,
                peer: "b".into(),
                message: "timed out".into(),
            },
        ] {
            roundtrip(&ActivationResponse::new(outcome));
        }
        let mut record = CapabilityRecord::new("peer");
        record.models.push(ModelOffer {
            id: "m".into(),
            n_layers: 24,
            bytes: 1 << 30,
            arch: "qwen2".into(),
            layer_bytes: vec![],
        });
        record.loaded.push(LoadedShard {
            model: "m".into(),
            layers: LayerRange::new(0, 12, 24),
        });
        record.files.push(FileOffer {
            repo: "o/r".into(),
            file: "m.gguf".into(),
            size: 3,
            sha256: "ab".into(),
        });
        roundtrip(&record);
    }

    #[test]
    fn tensor_bytes_are_raw_not_an_array_of_numbers() {
        let frame = TensorFrame {
            dtype: TensorDType::F32,
            shape: vec![1, 1, 1024],
            data: vec![0xAB; 4096],
        };
        let bytes = encode(&frame).unwrap();
        assert!(bytes.len() < 4096 + 64, "encoded {} bytes", bytes.len());
    }

    #[test]
    fn unknown_version_is_rejected_cleanly() {
        let mut record = CapabilityRecord::new("peer");
        record.v = PROTOCOL_VERSION + 1;
        let bytes = encode(&record).unwrap();
        let err = decode::<CapabilityRecord>(&bytes, usize::MAX).unwrap_err();
        assert!(matches!(err, CodecError::Version { got } if got == PROTOCOL_VERSION + 1));
        assert!(err.to_string().contains("unsupported protocol version"));
    }

    #[test]
    fn oversized_frame_is_rejected_before_parsing() {
        let err = decode::<ActivationResponse>(&[0u8; 100], 10).unwrap_err();
        assert!(matches!(
            err,
            CodecError::TooLarge {
                len: 100,
                limit: 10
            }
        ));
    }

    #[test]
    fn tensor_frame_validation_catches_wrong_lengths() {
        let mut frame = TensorFrame {
            dtype: TensorDType::F16,
            shape: vec![2, 3],
            data: vec![0; 12],
        };
        assert!(frame.validate().is_ok());
        frame.data.pop();
        assert!(frame.validate().is_err());
        frame.shape = vec![u32::MAX, u32::MAX, u32::MAX];
        assert!(frame.validate().is_err());
    }

    fn sample_request_bytes() -> Vec<u8> {
        encode(&ActivationRequest::new(
            1,
            "d",
            plan(),
            0,
            vec![9],
            Payload::Hidden(TensorFrame {
                dtype: TensorDType::F32,
                shape: vec![1, 1, 4],
                data: vec![1; 16],
            }),
            SamplingParams::default(),
        ))
        .unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(5000))]
        #[test]
        fn decoders_never_panic_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<ActivationRequest>(&bytes, MAX_FRAME_BYTES);
            let _ = decode::<ActivationResponse>(&bytes, MAX_FRAME_BYTES);
            let _ = decode::<CapabilityRecord>(&bytes, MAX_FRAME_BYTES);
            let _ = decode::<Plan>(&bytes, MAX_FRAME_BYTES);
        }

        #[test]
        fn decoders_never_panic_on_mutated_frames(
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
            cut in any::<usize>(),
        ) {
            let mut bytes = sample_request_bytes();
            for (at, value) in flips {
                let i = at % bytes.len();
                bytes[i] = value;
            }
            bytes.truncate(cut % (bytes.len() + 1));
            if let Ok(req) = decode::<ActivationRequest>(&bytes, MAX_FRAME_BYTES) {
                if let Payload::Hidden(frame) = &req.payload {
                    let _ = frame.validate();
                }
                let _ = req.plan.validate();
            }
        }
    }
}
