//! The web dashboard (`shoal node --dashboard ADDR`, off unless asked): a page of plain HTML
//! and JavaScript served by the node (no build step), showing the peers, a Dask-style task
//! stream (per task: where it ran, and how long it fetched its arguments, waited for a
//! worker and ran), actors, objects with their locations, and logs, for the whole mesh.
//!
//! The page reads `GET /api/state?kind=K[&limit=N][&filter=KEY%3DVALUE]...[&summary=1]`:
//! the state API's answer as JSON ([`crate::json`]), asked of this node over its own local
//! socket as `shoal list` asks it (so through the same access checks), which asks every
//! peer.
//!
//! Like `shoal list`, the page shows what tasks wrote and what they are called, to anyone who
//! can reach ADDR: bind it to loopback (or put it behind something that authenticates).

use std::path::PathBuf;
use std::time::Duration;

use shoal_protocol::state::{Filter, StateKind, StateQuery, DEFAULT_STATE_LIMIT};
use shoal_protocol::{frame, Hello, ToClient, ToNode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::http::{query_all, query_get, Handler, Reply};

const INDEX: &str = include_str!("index.html");
const SCRIPT: &str = include_str!("dashboard.js");

/// How long the node waits for the other peers, unless the page asks otherwise.
const WAIT: Duration = Duration::from_secs(2);

/// The dashboard of the node listening on a local socket.
#[derive(Debug)]
pub struct Dashboard {
    socket: PathBuf,
}

impl Dashboard {
    /// The dashboard of the node on `socket`.
    pub fn new(socket: PathBuf) -> Self {
        Self { socket }
    }

    async fn state(&self, query: &str) -> Reply {
        let bad = |m: String| Reply::text(400, "Bad Request", &format!("{m}\n"));
        let Some(kind) = query_get(query, "kind") else {
            return bad("which kind? ?kind=tasks|actors|objects|peers|workers|logs".into());
        };
        let kind: StateKind = match kind.parse() {
            Ok(k) => k,
            Err(e) => return bad(e.to_string()),
        };
        let mut q = StateQuery::new(kind);
        q.limit = match query_get(query, "limit").map(|l| l.parse::<u32>()) {
            None => DEFAULT_STATE_LIMIT,
            Some(Ok(l)) => l,
            Some(Err(e)) => return bad(format!("limit: {e}")),
        };
        q.summary = query_get(query, "summary").is_some_and(|s| s == "1");
        for f in query_all(query, "filter") {
            match f.parse::<Filter>() {
                Ok(f) => q.filters.push(f),
                Err(e) => return bad(e.to_string()),
            }
        }
        if let Err(e) = q.check() {
            return bad(e.to_string());
        }
        let msg = ToNode::State {
            request: 1,
            query: q,
            timeout_ms: WAIT.as_millis() as u32,
            local: false,
        };
        match ask(&self.socket, msg).await {
            Ok(ToClient::State { reply: Ok(r), .. }) => {
                Reply::ok("application/json", crate::json::reply(&r).to_string())
            }
            Ok(ToClient::State { reply: Err(e), .. }) => bad(e.to_string()),
            Ok(_) => Reply::text(502, "Bad Gateway", "unexpected answer from the node\n"),
            Err(e) => {
                tracing::warn!(error = %e, "the dashboard cannot ask its node");
                Reply::text(503, "Service Unavailable", &format!("{e}\n"))
            }
        }
    }
}

impl Handler for Dashboard {
    async fn get(&self, path: &str, query: &str) -> Reply {
        match path {
            "/" | "/index.html" => Reply::ok("text/html; charset=utf-8", INDEX),
            "/dashboard.js" => Reply::ok("text/javascript; charset=utf-8", SCRIPT),
            "/api/state" => self.state(query).await,
            _ => Reply::text(404, "Not Found", "the dashboard is at /\n"),
        }
    }
}

/// One request to the node on `socket`, as a command-line client: its answer.
async fn ask(socket: &std::path::Path, msg: ToNode) -> std::io::Result<ToClient> {
    let bad = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
    let mut stream = UnixStream::connect(socket).await?;
    let max = frame::DEFAULT_MAX_FRAME;
    let hello = Hello::cli(0xdb);
    let mut out = Vec::new();
    frame::encode_frame(&mut out, &ToNode::Hello(hello), max).map_err(|e| bad(e.to_string()))?;
    frame::encode_frame(&mut out, &msg, max).map_err(|e| bad(e.to_string()))?;
    stream.write_all(&out).await?;
    let mut frames = frame::FrameDecoder::new(max);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        while let Some(msg) = frames
            .next_message::<ToClient>()
            .map_err(|e| bad(e.to_string()))?
        {
            match msg {
                ToClient::State { .. } => return Ok(msg),
                ToClient::Rejected { reason } => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::PermissionDenied,
                        format!("the node refused the dashboard: {reason}"),
                    ))
                }
                _ => {}
            }
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the node closed the connection",
            ));
        }
        frames.extend(&chunk[..n]);
    }
}
