//! The node's small HTTP/1.1 server, for its metrics (`--metrics`) and its dashboard
//! (`--dashboard`): as small as it can be. A request's head is read with a deadline and a
//! size bound, parsed by `httparse`, handed to a [`Handler`], answered, and the connection is
//! closed; at most [`MAX_CONNECTIONS`] are served at once (others are closed unanswered, with
//! a log line). Only `GET` and `HEAD` are served; a malformed request gets 400, another
//! method 405, a head too large 431.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 16;

/// The largest request head read.
const MAX_HEAD: usize = 8 * 1024;

/// How long a client may take to send its request, and the node to answer.
const DEADLINE: Duration = Duration::from_secs(15);

/// An HTTP answer.
#[derive(Debug)]
pub struct Reply {
    /// The status code.
    pub code: u16,
    /// Its reason phrase.
    pub reason: &'static str,
    /// The body's type.
    pub content_type: &'static str,
    /// The body.
    pub body: Vec<u8>,
}

impl Reply {
    /// A 200 answer.
    pub fn ok(content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Reply {
            code: 200,
            reason: "OK",
            content_type,
            body: body.into(),
        }
    }

    /// An answer in plain text (the errors).
    pub fn text(code: u16, reason: &'static str, body: &str) -> Self {
        Reply {
            code,
            reason,
            content_type: "text/plain; charset=utf-8",
            body: body.as_bytes().to_vec(),
        }
    }
}

/// What answers the requests of one endpoint.
pub trait Handler: Send + Sync + 'static {
    /// The answer to a `GET` of `path` with query string `query` (without its `?`).
    fn get(&self, path: &str, query: &str) -> impl Future<Output = Reply> + Send;
}

/// Serves `handler` on `listener` until `stop`; `what` names the endpoint in logs.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    stop: CancellationToken,
    what: &'static str,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            Some(done) = conns.join_next(), if !conns.is_empty() => {
                if let Err(e) = done {
                    tracing::warn!(error = %e, what, "an HTTP connection failed");
                }
                continue;
            }
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, what, "accepting an HTTP connection failed");
                // Out of descriptors, say: give the others time to end.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, what, "too many HTTP connections at once; closing this one");
            continue;
        };
        let handler = handler.clone();
        let span = tracing::debug_span!("http_conn", what, %peer);
        conns.spawn(
            async move {
                match tokio::time::timeout(DEADLINE, answer(stream, &*handler)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::debug!(error = %e, "HTTP request not answered"),
                    Err(_) => tracing::debug!("HTTP request timed out"),
                }
                drop(slot);
            }
            .instrument(span),
        );
    }
    conns.abort_all();
    while conns.join_next().await.is_some() {}
}

/// Reads one request and answers it.
async fn answer<H: Handler>(mut stream: TcpStream, handler: &H) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let head_len = loop {
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break Some(i + 4);
        }
        if buf.len() > MAX_HEAD {
            break None;
        }
    };
    let (reply, head_only) = match head_len {
        Some(len) => route(&buf[..len], handler).await,
        None => (
            Reply::text(
                431,
                "Request Header Fields Too Large",
                "request head too large\n",
            ),
            false,
        ),
    };
    respond(&mut stream, reply, head_only).await
}

/// The answer to the request whose head is `head`, and whether it is a `HEAD` (answered
/// without a body).
async fn route<H: Handler>(head: &[u8], handler: &H) -> (Reply, bool) {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let (method, target) = match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {
            (req.method.unwrap_or_default(), req.path.unwrap_or_default())
        }
        Ok(httparse::Status::Partial) | Err(_) => {
            tracing::debug!("malformed HTTP request");
            return (
                Reply::text(400, "Bad Request", "malformed request\n"),
                false,
            );
        }
    };
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        return (Reply::text(405, "Method Not Allowed", "only GET\n"), false);
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    (handler.get(path, query).await, head_only)
}

/// Writes a whole answer (without its body for a `HEAD`) and closes the connection.
async fn respond(stream: &mut TcpStream, reply: Reply, head_only: bool) -> std::io::Result<()> {
    let Reply {
        code,
        reason,
        content_type,
        body,
    } = reply;
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    if !head_only {
        stream.write_all(&body).await?;
    }
    stream.shutdown().await
}

/// The value of `key` in a query string (`a=1&b=2`), percent-decoded; every value of it
/// with [`query_all`].
pub fn query_get(query: &str, key: &str) -> Option<String> {
    query_all(query, key).into_iter().next()
}

/// Every value of `key` in a query string, percent-decoded (`+` is a space).
pub fn query_all(query: &str, key: &str) -> Vec<String> {
    query
        .split('&')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k).as_deref() == Some(key))
                .then(|| decode(v))
                .flatten()
        })
        .collect()
}

/// Percent-decoding; `None` for a bad escape or bytes that are not UTF-8.
fn decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = (bytes.next()? as char).to_digit(16)?;
                let lo = (bytes.next()? as char).to_digit(16)?;
                out.push((hi * 16 + lo) as u8);
            }
            b => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_decode() {
        let q = "kind=tasks&filter=state%3DRUNNING&filter=function%3Dmy%3A%3Af&limit=5&x";
        assert_eq!(query_get(q, "kind").as_deref(), Some("tasks"));
        assert_eq!(
            query_all(q, "filter"),
            vec!["state=RUNNING".to_string(), "function=my::f".to_string()]
        );
        assert_eq!(query_get(q, "x").as_deref(), Some(""));
        assert_eq!(query_get(q, "nope"), None);
        assert_eq!(query_get("a=%zz", "a"), None);
        assert_eq!(query_get("a=b+c", "a").as_deref(), Some("b c"));
    }
}
