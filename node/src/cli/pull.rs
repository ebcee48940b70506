//! `shoal get object ID --out FILE`: an object's bytes (its encoded value, as the store holds
//! it), written to a file. The node gets a copy first if only peers hold one, as for any
//! reader: it may pull only objects it may read (its programs' own, and those it was given a
//! ref to), so a peer refuses the pull of another program's object. On a terminal a
//! progress bar follows the pull, from the node's list of transfers under way.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use shoal_protocol::{ObjectId, ObjectValue, ToClient, ToNode, Transfer};

use super::progress::{self, Bar};
use super::Conn;

/// How often the node is asked how far its pull is.
const POLL: Duration = Duration::from_millis(200);

/// Writes object `id` to `out` (`-` for stdout); returns its size.
pub(crate) fn object(socket: &Path, id: ObjectId, out: &Path) -> Result<u64> {
    let hex = id.to_hex();
    let mut bar = Bar::new(format!("object {}", &hex[..12]));
    let mut conn = Conn::open(socket, &[ToNode::Get { ids: vec![id] }])?;
    let mut store_dir = None;
    let mut request = 0u64;
    let value = loop {
        match conn.recv(POLL)? {
            Some(ToClient::Welcome { store_dir: d, .. }) => store_dir = Some(d),
            Some(ToClient::Object { id: got, value }) if got == id => break value,
            Some(ToClient::Status { status, .. }) => {
                let transfer = status
                    .mesh
                    .as_ref()
                    .and_then(|m| m.transfers.iter().find(|t| t.what == Transfer::Object(id)));
                if let Some(t) = transfer {
                    bar.set(t.done, t.total);
                }
            }
            Some(_) => {}
            None => {
                request += 1;
                conn.send(&ToNode::Status { request })?;
            }
        }
    };
    let size = match value {
        ObjectValue::Error(e) => {
            bar.clear();
            bail!("object {hex}: {e}");
        }
        ObjectValue::Inline(bytes) => {
            write_out(out, |w| w.write_all(&bytes))?;
            bytes.len() as u64
        }
        ObjectValue::Shared(object) => {
            let Some(dir) = store_dir else {
                bail!("the node did not say where its store is");
            };
            // Ours to read while this connection holds the object.
            let path = Path::new(&dir).join(&hex);
            let mut file = std::fs::File::open(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            let len = file.metadata()?.len();
            if len != object.size {
                bail!("the store's copy is {len} bytes, not {}", object.size);
            }
            write_out(out, |w| std::io::copy(&mut file, w).map(|_| ()))?;
            object.size
        }
    };
    bar.finish(size);
    Ok(size)
}

/// Writes through `f` to the file `out`, or to stdout for `-`.
fn write_out(out: &Path, f: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> Result<()> {
    if out == Path::new("-") {
        let mut stdout = std::io::stdout().lock();
        f(&mut stdout).and_then(|()| stdout.flush())?;
        return Ok(());
    }
    let mut file =
        std::fs::File::create(out).with_context(|| format!("cannot write {}", out.display()))?;
    f(&mut file).with_context(|| format!("writing {}", out.display()))?;
    file.sync_all()?;
    Ok(())
}

/// What a transfer brings: its kind (`object` or `binary`) and its id in hex.
pub(crate) fn kind_and_id(what: Transfer) -> (&'static str, String) {
    match what {
        Transfer::Object(id) => ("object", id.to_hex()),
        Transfer::Binary(id) => ("binary", id.to_hex()),
    }
}

/// `shoal status`'s lines for transfers under way.
pub(crate) fn describe(t: &shoal_protocol::TransferStatus) -> String {
    let (what, id) = kind_and_id(t.what);
    let peers = super::short_ids(t.peers.iter().cloned(), 12);
    format!(
        "{what} {}  {} of {}  from {}  for {:.1} s",
        &id[..12],
        progress::bytes(if t.total > 0 {
            t.done.min(t.total)
        } else {
            t.done
        }),
        if t.total > 0 {
            progress::bytes(t.total)
        } else {
            "?".into()
        },
        peers.join(", "),
        t.elapsed_ms as f64 / 1000.0
    )
}
