//! GetChunks over a plain HTTP/2 body: the read path between nodes without protobuf
//! framing of the chunk bytes. The request is the same `GetChunksRequest` message
//! (protobuf, `POST /berth.shard.v1.RawChunks/Get` on the cluster listener, so it
//! shares the gRPC connection, its TLS and its windows); the response body is a
//! sequence of records:
//!
//! ```text
//! chunk: 0x01 | stripe u64 LE | checksum [32] | length u32 LE | shard bytes [length]
//! error: 0x02 | gRPC status code u32 LE | length u32 LE | UTF-8 message [length]
//! ```
//!
//! The chunks of the requested stripes come in order; an error record ends the body
//! (a refusal before the first chunk is an error record too, with the codes the gRPC
//! method answers). The record head and the shard bytes are separate HTTP/2 DATA
//! frames, and the shard bytes leave as the buffer they were read into: nothing copies
//! them on the sending side (gRPC encodes each message into a fresh buffer), and when
//! a chunk arrives in one frame the receiver takes that frame as the chunk.
//!
//! A peer that does not serve this path (an older build) answers with gRPC's
//! `UNIMPLEMENTED` in an `application/grpc` response; the client then reads that
//! peer through the gRPC method, and tries this path again a minute later.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::{StreamExt, stream};
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use prost::Message;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tower::{Service, ServiceExt};

use super::client::{ShardRpcError, ended_by, within};
use super::limits::{CALL_TIMEOUT, CHUNK_IDLE_MAX};
use super::pb;
use super::server::{Refusal, ServedChunk, ShardService};
use super::wire::WireError;
use crate::format::CHECKSUM_BYTES;

/// The path a node serves raw GetChunks on, under [`RawChunks`]' service name.
const GET_PATH: &str = "/berth.shard.v1.RawChunks/Get";

/// The content type of a raw GetChunks response; version 1 of the record format.
const CONTENT_TYPE: &str = "application/vnd.berth.shard-chunks.v1";

/// Largest request body a node reads: a `GetChunksRequest` is a few hundred bytes.
const REQUEST_BYTES_MAX: usize = 16 * 1024;

const CHUNK_RECORD: u8 = 1;
const ERROR_RECORD: u8 = 2;

/// Tag, stripe, checksum and length of a chunk record.
const CHUNK_HEAD_BYTES: usize = 1 + 8 + CHECKSUM_BYTES as usize + 4;
/// Tag, code and length of an error record.
const ERROR_HEAD_BYTES: usize = 1 + 4 + 4;
/// Longest error message a client accepts.
const ERROR_MESSAGE_BYTES_MAX: usize = 64 * 1024;

fn chunk_head(stripe: u64, checksum: &[u8; CHECKSUM_BYTES as usize], len: usize) -> Bytes {
    let mut head = BytesMut::with_capacity(CHUNK_HEAD_BYTES);
    head.put_u8(CHUNK_RECORD);
    head.put_u64_le(stripe);
    head.put_slice(checksum);
    head.put_u32_le(u32::try_from(len).expect("a shard chunk is far below 4 GiB"));
    head.freeze()
}

fn error_record(status: &Status) -> Bytes {
    let mut message = status.message().as_bytes();
    if message.len() > ERROR_MESSAGE_BYTES_MAX {
        let mut end = ERROR_MESSAGE_BYTES_MAX;
        while !status.message().is_char_boundary(end) {
            end -= 1;
        }
        message = &message[..end];
    }
    let mut record = BytesMut::with_capacity(ERROR_HEAD_BYTES + message.len());
    record.put_u8(ERROR_RECORD);
    record.put_u32_le(status.code() as u32);
    record.put_u32_le(message.len() as u32);
    record.put_slice(message);
    record.freeze()
}

/// The raw GetChunks service of a node's shard service, mounted beside its gRPC
/// server on the cluster listener (`Routes::add_service`).
#[derive(Debug, Clone)]
pub struct RawChunks {
    service: ShardService,
}

impl RawChunks {
    pub(super) fn new(service: ShardService) -> RawChunks {
        RawChunks { service }
    }
}

impl NamedService for RawChunks {
    const NAME: &'static str = "berth.shard.v1.RawChunks";
}

impl Service<http::Request<Body>> for RawChunks {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let service = self.service.clone();
        Box::pin(async move { Ok(respond(service, request).await) })
    }
}

async fn respond(service: ShardService, request: http::Request<Body>) -> http::Response<Body> {
    if request.uri().path() != GET_PATH {
        return http::Response::builder()
            .status(http::StatusCode::NOT_FOUND)
            .body(Body::empty())
            .expect("a static response is valid");
    }
    let bad = |e: &dyn std::fmt::Display| Refusal::Wire(WireError::Request(e.to_string()));
    let opened = match Limited::new(request.into_body(), REQUEST_BYTES_MAX)
        .collect()
        .await
    {
        Ok(body) => match pb::GetChunksRequest::decode(body.to_bytes()) {
            Ok(request) => service.get(request).await,
            Err(e) => Err(bad(&e)),
        },
        Err(e) => Err(bad(&e)),
    };
    let rx = match opened {
        Ok(rx) => rx,
        Err(refusal) => {
            return records(stream::iter([error_record(
                &refusal.into_status("GetChunks"),
            )]));
        }
    };
    // Each chunk becomes two frames, its head and its bytes; an error ends the body.
    let chunks = stream::unfold(Some(rx), |rx| async move {
        let mut rx = rx?;
        match rx.recv().await? {
            Ok(ServedChunk { stripe, chunk }) => {
                let head = chunk_head(stripe, &chunk.checksum, chunk.shard.len());
                Some((stream::iter(vec![head, chunk.shard]), Some(rx)))
            }
            Err(status) => Some((stream::iter(vec![error_record(&status)]), None)),
        }
    })
    .flatten();
    records(chunks)
}

/// A 200 response whose body is `frames`.
fn records(frames: impl futures::Stream<Item = Bytes> + Send + 'static) -> http::Response<Body> {
    let frames = frames.map(|frame| Ok::<_, Infallible>(http_body::Frame::data(frame)));
    http::Response::builder()
        .header(http::header::CONTENT_TYPE, CONTENT_TYPE)
        .body(Body::new(StreamBody::new(frames)))
        .expect("a response of valid headers is valid")
}

/// What opening a raw GetChunks call on a peer gave.
pub(super) enum Opened {
    Records(Records),
    /// The peer does not serve raw GetChunks.
    Unsupported,
}

/// Sends `request` to the raw GetChunks path of the peer behind `channel`.
pub(super) async fn open(
    channel: &Channel,
    request: &pb::GetChunksRequest,
) -> Result<Opened, ShardRpcError> {
    let call = http::Request::builder()
        .method(http::Method::POST)
        .uri(GET_PATH)
        .header(http::header::CONTENT_TYPE, "application/x-protobuf")
        .body(Body::new(Full::new(Bytes::from(request.encode_to_vec()))))
        .expect("a request of valid headers is valid");
    let mut channel = channel.clone();
    let response = within(CALL_TIMEOUT, async move {
        let channel = channel
            .ready()
            .await
            .map_err(|e| Status::from_error(e.into()))?;
        channel
            .call(call)
            .await
            .map_err(|e| Status::from_error(e.into()))
    })
    .await?;
    let raw = response.status() == http::StatusCode::OK
        && response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|t| t == CONTENT_TYPE);
    if !raw {
        return Ok(Opened::Unsupported);
    }
    Ok(Opened::Records(Records {
        body: response.into_body(),
        queue: VecDeque::new(),
        queued: 0,
    }))
}

/// A chunk as a peer sent it, not yet verified.
pub(super) struct Received {
    pub stripe: u64,
    pub checksum: [u8; CHECKSUM_BYTES as usize],
    pub data: Bytes,
}

/// The records of a raw GetChunks response being read.
pub(super) struct Records {
    body: Body,
    /// Frames received and not yet taken, and their total length.
    queue: VecDeque<Bytes>,
    queued: usize,
}

impl Records {
    /// The next chunk, expected to be that of `stripe` and at most `shard_bytes` long
    /// (its length is checked before its bytes are read). An error record is the
    /// status the peer sent; a body that ends first is `Truncated`.
    pub(super) async fn next(
        &mut self,
        stripe: u64,
        shard_bytes: u32,
    ) -> Result<Received, ShardRpcError> {
        let truncated = ShardRpcError::Truncated { stripe };
        if !self.fill(1).await? {
            return Err(truncated);
        }
        match self.queue[0][0] {
            CHUNK_RECORD => {
                if !self.fill(CHUNK_HEAD_BYTES).await? {
                    return Err(truncated);
                }
                let mut head = self.take(CHUNK_HEAD_BYTES);
                head.advance(1);
                let found = head.get_u64_le();
                let mut checksum = [0; CHECKSUM_BYTES as usize];
                head.copy_to_slice(&mut checksum);
                let len = head.get_u32_le() as usize;
                if len == 0 || len > shard_bytes as usize {
                    return Err(ShardRpcError::ChunkLength {
                        stripe,
                        expected: shard_bytes,
                        found: len,
                    });
                }
                if !self.fill(len).await? {
                    return Err(truncated);
                }
                Ok(Received {
                    stripe: found,
                    checksum,
                    data: self.take(len),
                })
            }
            ERROR_RECORD => {
                if !self.fill(ERROR_HEAD_BYTES).await? {
                    return Err(truncated);
                }
                let mut head = self.take(ERROR_HEAD_BYTES);
                head.advance(1);
                let code = Code::from_i32(head.get_u32_le() as i32);
                let len = head.get_u32_le() as usize;
                if len > ERROR_MESSAGE_BYTES_MAX {
                    return Err(WireError::Record("an error message too long").into());
                }
                if !self.fill(len).await? {
                    return Err(truncated);
                }
                let message = String::from_utf8_lossy(&self.take(len)).into_owned();
                Err(ended_by(Status::new(code, message), stripe))
            }
            _ => Err(WireError::Record("an unknown record tag").into()),
        }
    }

    /// Reads frames until `n` bytes are queued; `false` when the body ends first.
    async fn fill(&mut self, n: usize) -> Result<bool, ShardRpcError> {
        while self.queued < n {
            let frame = match tokio::time::timeout(CHUNK_IDLE_MAX, self.body.frame()).await {
                Err(_) => return Err(ShardRpcError::stalled(CHUNK_IDLE_MAX)),
                Ok(None) => return Ok(false),
                Ok(Some(frame)) => frame?,
            };
            // Trailers carry nothing in this format.
            if let Ok(data) = frame.into_data()
                && !data.is_empty()
            {
                self.queued += data.len();
                self.queue.push_back(data);
            }
        }
        Ok(true)
    }

    /// The next `n` queued bytes (`n <= queued`): a slice of the first frame when it
    /// holds them all, else a copy of the frames they span.
    fn take(&mut self, n: usize) -> Bytes {
        self.queued -= n;
        let front = self.queue.front_mut().expect("n bytes are queued");
        if front.len() >= n {
            let out = front.split_to(n);
            if front.is_empty() {
                self.queue.pop_front();
            }
            return out;
        }
        let mut out = BytesMut::with_capacity(n);
        while out.len() < n {
            let front = self.queue.front_mut().expect("n bytes are queued");
            let part = front.split_to(front.len().min(n - out.len()));
            out.put_slice(&part);
            if front.is_empty() {
                self.queue.pop_front();
            }
        }
        out.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The records of a response whose body arrives as `frames`.
    fn records(frames: Vec<Bytes>) -> Records {
        let frames = stream::iter(frames).map(|f| Ok::<_, Infallible>(http_body::Frame::data(f)));
        Records {
            body: Body::new(StreamBody::new(frames)),
            queue: VecDeque::new(),
            queued: 0,
        }
    }

    /// `bytes` cut into frames of `sizes` bytes (the rest in one last frame).
    fn cut(bytes: &[u8], sizes: &[usize]) -> Vec<Bytes> {
        let mut out = Vec::new();
        let mut rest = bytes;
        for &n in sizes {
            let (a, b) = rest.split_at(n.min(rest.len()));
            out.push(Bytes::copy_from_slice(a));
            rest = b;
        }
        out.push(Bytes::copy_from_slice(rest));
        out
    }

    fn chunk_record(stripe: u64, data: &[u8]) -> Vec<u8> {
        let mut out = chunk_head(stripe, &[stripe as u8; 32], data.len()).to_vec();
        out.extend_from_slice(data);
        out
    }

    /// Records are read wherever the frames cut them: a head split over frames, a
    /// chunk spread over several, two records in one frame; a chunk that is one whole
    /// frame is that frame, not a copy.
    #[tokio::test]
    async fn records_are_read_across_any_frame_boundaries() {
        let mut body = chunk_record(4, &[1; 100]);
        body.extend(chunk_record(5, &[2; 60]));
        for sizes in [&[][..], &[1], &[3, 50, 7], &[45, 100, 20]] {
            let mut r = records(cut(&body, sizes));
            let first = r.next(4, 100).await.unwrap();
            assert_eq!((first.stripe, first.checksum), (4, [4; 32]));
            assert_eq!(first.data, vec![1; 100]);
            let second = r.next(5, 100).await.unwrap();
            assert_eq!((second.stripe, &second.data[..]), (5, &[2; 60][..]));
            assert!(matches!(
                r.next(6, 100).await,
                Err(ShardRpcError::Truncated { stripe: 6 })
            ));
        }
        let data = Bytes::from(vec![3; 64]);
        let mut r = records(vec![chunk_head(0, &[0; 32], 64), data.clone()]);
        assert_eq!(r.next(0, 64).await.unwrap().data.as_ptr(), data.as_ptr());
    }

    /// What a peer may not send: a chunk longer than the header's shards (refused
    /// before its bytes are read), an empty one, an unknown record, a body cut off in
    /// a record. An error record is the peer's status; `DATA_LOSS` names the stripe.
    #[tokio::test]
    async fn bad_records_and_error_records_end_the_read() {
        let long = records(vec![chunk_head(0, &[0; 32], 1 << 30)]);
        assert!(matches!(
            { long }.next(0, 4096).await,
            Err(ShardRpcError::ChunkLength {
                stripe: 0,
                expected: 4096,
                found: 1_073_741_824,
            })
        ));
        let empty = records(vec![chunk_head(0, &[0; 32], 0)]);
        assert!(matches!(
            { empty }.next(0, 4096).await,
            Err(ShardRpcError::ChunkLength { found: 0, .. })
        ));
        let unknown = records(vec![Bytes::from_static(&[9, 0, 0])]);
        assert!(matches!(
            { unknown }.next(0, 4096).await,
            Err(ShardRpcError::Malformed(WireError::Record(_)))
        ));
        let record = chunk_record(2, &[5; 80]);
        for cut_at in [1, 20, CHUNK_HEAD_BYTES, CHUNK_HEAD_BYTES + 79] {
            let mut r = records(vec![Bytes::copy_from_slice(&record[..cut_at])]);
            assert!(matches!(
                r.next(2, 4096).await,
                Err(ShardRpcError::Truncated { stripe: 2 })
            ));
        }
        let mut not_found = records(cut(
            &error_record(&Status::new(Code::NotFound, "no such shard")),
            &[4],
        ));
        assert!(matches!(
            not_found.next(0, 4096).await,
            Err(ShardRpcError::NotFound { message }) if message == "no such shard"
        ));
        let mut lost = records(vec![error_record(&Status::new(Code::DataLoss, "bad"))]);
        assert!(matches!(
            lost.next(7, 4096).await,
            Err(ShardRpcError::Corrupt { stripe: 7 })
        ));
        let mut huge = BytesMut::new();
        huge.put_u8(ERROR_RECORD);
        huge.put_u32_le(Code::Internal as u32);
        huge.put_u32_le(u32::MAX);
        assert!(matches!(
            records(vec![huge.freeze()]).next(0, 4096).await,
            Err(ShardRpcError::Malformed(WireError::Record(_)))
        ));
    }

    /// The record heads are byte-stable: a later build reads what this one sends.
    #[test]
    fn record_heads_are_byte_stable() {
        let head = chunk_head(0x0102, &[0xab; 32], 0x0400);
        let mut expected = vec![1, 2, 1, 0, 0, 0, 0, 0, 0];
        expected.extend([0xab; 32]);
        expected.extend([0, 4, 0, 0]);
        assert_eq!(&head[..], &expected[..]);
        let error = error_record(&Status::new(Code::NotFound, "gone"));
        assert_eq!(&error[..], b"\x02\x05\0\0\0\x04\0\0\0gone");
    }
}
