//! `/exo-p2p/activation/1`: length-prefixed CBOR frames carrying activation requests and
//! responses, with a size limit. A malformed or oversized request still reaches the handler as
//! [`Inbound::Invalid`], so the sender gets an error reply rather than a dropped stream.

use std::io;

use exo_protocol::{
    decode, encode, ActivationRequest, ActivationResponse, FileRequest, FileResponse,
    MAX_CHUNK_BYTES, MAX_FRAME_BYTES,
};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::{request_response, StreamProtocol};

pub const ACTIVATION_PROTOCOL: StreamProtocol = StreamProtocol::new("/exo-p2p/activation/1");
pub const FILES_PROTOCOL: StreamProtocol = StreamProtocol::new("/exo-p2p/files/1");

/// Responses are small (a token id, an error); anything larger is refused.
const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// A request as received: decoded, or the reason it could not be.
#[derive(Debug, Clone)]
pub enum Inbound {
    Request(Box<ActivationRequest>),
    Invalid(String),
}

#[derive(Debug, Clone, Default)]
pub struct ActivationCodec;

async fn read_frame<T: AsyncRead + Unpin + Send>(
    io: &mut T,
    limit: usize,
) -> io::Result<Result<Vec<u8>, String>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_le_bytes(len) as usize;
    if len > limit {
        return Ok(Err(format!(
            "frame of {len} bytes exceeds the limit of {limit} bytes"
        )));
    }
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    Ok(Ok(buf))
}

async fn write_frame<T: AsyncWrite + Unpin + Send>(io: &mut T, bytes: &[u8]) -> io::Result<()> {
    let len = u32::try_from(bytes.len()).map_err(|_| io::Error::other("frame too large"))?;
    io.write_all(&len.to_le_bytes()).await?;
    io.write_all(bytes).await?;
    io.close().await
}

fn invalid(e: impl ToString) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

impl request_response::Codec for ActivationCodec {
    type Protocol = StreamProtocol;
    type Request = Inbound;
    type Response = ActivationResponse;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Inbound>
    where
        T: AsyncRead + Unpin + Send,
    {
        Ok(match read_frame(io, MAX_FRAME_BYTES).await? {
            Ok(bytes) => match decode::<ActivationRequest>(&bytes, MAX_FRAME_BYTES) {
                Ok(req) => Inbound::Request(Box::new(req)),
                Err(e) => Inbound::Invalid(e.to_string()),
            },
            Err(reason) => Inbound::Invalid(reason),
        })
    }

    async fn read_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<ActivationResponse>
    where
        T: AsyncRead + Unpin + Send,
    {
        let bytes = read_frame(io, MAX_RESPONSE_BYTES).await?.map_err(invalid)?;
        decode(&bytes, MAX_RESPONSE_BYTES).map_err(invalid)
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Inbound,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        match req {
            Inbound::Request(req) => write_frame(io, &encode(&*req).map_err(invalid)?).await,
            Inbound::Invalid(reason) => Err(invalid(reason)),
        }
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: ActivationResponse,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &encode(&res).map_err(invalid)?).await
    }
}

/// `/exo-p2p/files/1`: small requests, replies of at most one chunk plus framing.
#[derive(Debug, Clone, Default)]
pub struct FileCodec;

const MAX_FILE_REQUEST_BYTES: usize = 4096;
const MAX_FILE_RESPONSE_BYTES: usize = MAX_CHUNK_BYTES as usize + 4096;

impl request_response::Codec for FileCodec {
    type Protocol = StreamProtocol;
    type Request = FileRequest;
    type Response = FileResponse;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<FileRequest>
    where
        T: AsyncRead + Unpin + Send,
    {
        let bytes = read_frame(io, MAX_FILE_REQUEST_BYTES)
            .await?
            .map_err(invalid)?;
        decode(&bytes, MAX_FILE_REQUEST_BYTES).map_err(invalid)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<FileResponse>
    where
        T: AsyncRead + Unpin + Send,
    {
        let bytes = read_frame(io, MAX_FILE_RESPONSE_BYTES)
            .await?
            .map_err(invalid)?;
        decode(&bytes, MAX_FILE_RESPONSE_BYTES).map_err(invalid)
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: FileRequest,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &encode(&req).map_err(invalid)?).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: FileResponse,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &encode(&res).map_err(invalid)?).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use exo_protocol::{Outcome, TokenOut};
    use futures::io::Cursor;
    use libp2p::request_response::Codec;

    #[test]
    fn frames_round_trip_and_bad_frames_become_invalid() {
        futures::executor::block_on(async {
            let mut codec = ActivationCodec;
            let res = ActivationResponse::new(Outcome::Token(TokenOut {
                id: 7,
                logprob: None,
                top: vec![],
            }));
            let mut buf = Cursor::new(Vec::new());
            codec
                .write_response(&ACTIVATION_PROTOCOL, &mut buf, res.clone())
                .await
                .unwrap();
            let mut rd = Cursor::new(buf.into_inner());
            assert_eq!(
                codec
                    .read_response(&ACTIVATION_PROTOCOL, &mut rd)
                    .await
                    .unwrap(),
                res
            );

            // Garbage of a valid length decodes to Invalid, not an error or a panic.
            let mut garbage = 5u32.to_le_bytes().to_vec();
            garbage.extend_from_slice(b"\xff\x00ab\x01");
            let got = codec
                .read_request(&ACTIVATION_PROTOCOL, &mut Cursor::new(garbage))
                .await
                .unwrap();
            assert!(matches!(got, Inbound::Invalid(_)));

            // An oversized length is refused before anything is allocated.
            let huge = (u32::MAX).to_le_bytes().to_vec();
            let got = codec
                .read_request(&ACTIVATION_PROTOCOL, &mut Cursor::new(huge))
                .await
                .unwrap();
            assert!(matches!(got, Inbound::Invalid(r) if r.contains("exceeds")));
        });
    }
}
