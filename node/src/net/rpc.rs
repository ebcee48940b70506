//! The request-response codec of the test-only control protocol (`PeerRequest::Ping`, with
//! the `test-utils` feature): one frame each way, in the format of
//! [`shoal_protocol::frame`] (through [`super::framed`]). A frame longer than the limit is
//! refused before its payload is read; a payload that does not decode exactly is an error.
//! Either way the request fails, the failure is logged by the network task, and the
//! connection and every other peer carry on.

use std::io;
use std::marker::PhantomData;

use futures::{AsyncRead, AsyncWrite};
use libp2p::request_response;
use libp2p::StreamProtocol;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::framed;

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
        framed::read_one(io, self.max).await
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Resp> {
        framed::read_one(io, self.max).await
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Req,
    ) -> io::Result<()> {
        framed::write(io, &req, self.max).await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        resp: Resp,
    ) -> io::Result<()> {
        framed::write(io, &resp, self.max).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::Cursor;
    use request_response::Codec;
    use shoal_protocol::mesh::{PeerRequest, PeerResponse};

    #[test]
    fn requests_are_bounded_and_exact() {
        futures::executor::block_on(async {
            let proto = StreamProtocol::new("/shoal/test/rpc/1");
            let mut codec = BincodeCodec::<PeerRequest, PeerResponse>::default();
            let ping = PeerRequest::Ping { mesh: "m".into() };
            let mut out = Vec::new();
            codec
                .write_request(&proto, &mut out, ping.clone())
                .await
                .unwrap();
            // The one framing of the project.
            let (payload, used) = shoal_protocol::frame::split_frame(&out, MAX_RPC_BYTES)
                .unwrap()
                .unwrap();
            assert_eq!(used, out.len());
            assert_eq!(
                shoal_protocol::codec::decode::<PeerRequest>(payload, 100).unwrap(),
                ping
            );
            let got = codec
                .read_request(&proto, &mut Cursor::new(out.clone()))
                .await
                .unwrap();
            assert_eq!(got, ping);
            // One byte over the limit: refused before the payload is read.
            let mut small = BincodeCodec::<PeerRequest, PeerResponse> {
                max: out.len() - 5,
                _p: PhantomData,
            };
            let e = small
                .read_request(&proto, &mut Cursor::new(out.clone()))
                .await
                .unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData);
            // Truncated.
            let e = codec
                .read_request(&proto, &mut Cursor::new(out[..out.len() - 1].to_vec()))
                .await
                .unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        });
    }
}
