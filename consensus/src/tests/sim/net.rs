//! berth's real gRPC transport over turmoil's simulated TCP: the dialer that gives each
//! tonic channel a simulated connection, and the stream of simulated connections a
//! tonic server accepts. Everything above the socket (HTTP/2, tonic, the Raft wire
//! encoding, forwarding) is the code berth runs.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;
use tonic::transport::{Endpoint, Uri};

use crate::grpc::Dialer;

/// Dials peers over the simulated network of the current turmoil host.
pub(super) fn dialer() -> Dialer {
    Dialer::custom(|endpoint: Endpoint| {
        endpoint.connect_with_connector_lazy(tower::service_fn(|uri: Uri| async move {
            let host = uri.host().unwrap_or_default().to_owned();
            let port = uri.port_u16().unwrap_or(80);
            let stream = turmoil::net::TcpStream::connect((host.as_str(), port)).await?;
            Ok::<_, io::Error>(TokioIo::new(stream))
        }))
    })
}

/// A simulated TCP connection as a tonic server sees it.
pub(super) struct SimConn(turmoil::net::TcpStream);

impl Connected for SimConn {
    type ConnectInfo = ();

    fn connect_info(&self) {}
}

impl AsyncRead for SimConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for SimConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// The connections a simulated listener accepts, as a stream for tonic's server.
pub(super) fn incoming(
    listener: turmoil::net::TcpListener,
) -> impl Stream<Item = io::Result<SimConn>> {
    futures::stream::unfold(listener, |listener| async move {
        let next = listener.accept().await.map(|(stream, _)| SimConn(stream));
        Some((next, listener))
    })
}
