//! The request-response codec for control messages between peers: a `u32` big-endian length,
//! then the bincode encoding (through [`shoal_protocol::codec`]). A frame longer than the
//! limit is refused before its payload is read; a payload that does not decode exactly is an
//! error. Either way the request fails, the failure is logged by the network task, and the
//! connection and every other peer carry on.

use std::io;
use std::marker::PhantomData;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::request_response;
use libp2p::StreamProtocol;
use serde::de::DeserializeOwned;
use serde::Serialize;
use shoal_protocol::codec;

/// Largest control message, either way.
pub const MAX_RPC_BYTES: usize = 1 << 20;

/// A bounded bincode codec for requests `Req` and responses `Resp`.
#[derive(Debug)]
pub struct BincodeCodec<Req, Resp> {
    max: usize,
    _p: PhantomData<fn() -> (Req, Resp)>,
}

impl<Req, Resp> Clone for BincodeCodec<Req, Resp> {
    fn clone(&self) -> Self {
        Self {
            max: self.max,
            _p: PhantomData,
        }
    }
}

impl<Req, Resp> Default for BincodeCodec<Req, Resp> {
    fn default() -> Self {
        Self {
            max: MAX_RPC_BYTES,
            _p: PhantomData,
        }
    }
}

/// Reads one frame of at most `max` bytes.
pub async fn read_frame<T: AsyncRead + Unpin>(io: &mut T, max: usize) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds the maximum of {max} bytes"),
        ));
    }
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    Ok(buf)
}

/// Writes one frame.
pub async fn write_frame<T: AsyncWrite + Unpin>(io: &mut T, bytes: &[u8]) -> io::Result<()> {
    let len = u32::try_from(bytes.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too large"))?;
    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(bytes).await?;
    io.flush().await
}

fn decode<T: DeserializeOwned>(bytes: &[u8], max: usize) -> io::Result<T> {
    codec::decode(bytes, max).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn encode<T: Serialize>(value: &T, max: usize) -> io::Result<Vec<u8>> {
    let bytes = codec::encode(value).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    if bytes.len() > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "message of {} bytes exceeds the maximum of {max}",
                bytes.len()
            ),
        ));
    }
    Ok(bytes)
}

impl<Req, Resp> request_response::Codec for BincodeCodec<Req, Resp>
where
    Req: Serialize + DeserializeOwned + Send,
    Resp: Serialize + DeserializeOwned + Send,
{
    type Protocol = StreamProtocol;
    type Request = Req;
    type Response = Resp;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Req> {
        let bytes = read_frame(io, self.max).await?;
        decode(&bytes, self.max)
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Resp> {
        let bytes = read_frame(io, self.max).await?;
        decode(&bytes, self.max)
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Req,
    ) -> io::Result<()> {
        write_frame(io, &encode(&req, self.max)?).await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        resp: Resp,
    ) -> io::Result<()> {
        write_frame(io, &encode(&resp, self.max)?).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::Cursor;

    #[test]
    fn frames_are_bounded_and_exact() {
        futures::executor::block_on(async {
            let mut out = Vec::new();
            write_frame(&mut out, b"hello").await.unwrap();
            let mut r = Cursor::new(out.clone());
            assert_eq!(read_frame(&mut r, 5).await.unwrap(), b"hello");
            // One byte over the limit: refused before reading the payload.
            let mut r = Cursor::new(out.clone());
            let e = read_frame(&mut r, 4).await.unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData);
            // Truncated.
            let mut r = Cursor::new(out[..6].to_vec());
            assert!(read_frame(&mut r, 5).await.is_err());
            // Garbage that frames fine but does not decode.
            let e =
                decode::<shoal_protocol::mesh::PeerRequest>(&[0xff, 0xff, 0xff], 100).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        });
    }
}
