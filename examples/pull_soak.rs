//! Issue 12 item 5 reproduction: many tasks each taking a distinct 4 MiB argument, spread
//! over a mesh; counts the failures by message.
//!
//! Run with: `SHOAL_SOCKET=... cargo run --release --example pull_soak [-- N WINDOW MODE WORK_MS]`
//! (MODE: `put`, args put by the driver; `made`, args made by other tasks; `mix`).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use shoal::{Bytes, ObjectRef};

const LEN: usize = 4 << 20;

#[shoal::remote]
fn make(len: u64, nonce: u64) -> Bytes {
    let mut v = vec![0u8; len as usize];
    v[..8].copy_from_slice(&nonce.to_le_bytes());
    Bytes(v)
}

#[shoal::remote]
fn consume(b: Bytes, work_ms: u64) -> (u64, String) {
    // Work enough that the driver's node cannot keep up alone: the tasks spread.
    std::thread::sleep(Duration::from_millis(work_ms));
    let mut n = [0u8; 8];
    n.copy_from_slice(&b.0[..8]);
    (u64::from_le_bytes(n), shoal::peer_id().unwrap_or_default())
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let n: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(2500);
    let window: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(64);
    let mode = args.next().unwrap_or_else(|| "put".to_string());
    let work_ms: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(20);
    shoal::init()?;
    let start = Instant::now();
    let mut inflight: VecDeque<(u64, ObjectRef<(u64, String)>)> = VecDeque::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut per_peer: BTreeMap<String, u64> = BTreeMap::new();
    let mut ok = 0u64;
    let mut next = 0u64;
    while next < n || !inflight.is_empty() {
        while next < n && inflight.len() < window {
            let made = match mode.as_str() {
                "made" => true,
                "mix" => next % 2 == 1,
                _ => false,
            };
            let r = if made {
                let arg = make.remote(LEN as u64, next);
                consume.remote(&arg, work_ms)
            } else {
                let mut v = vec![0u8; LEN];
                v[..8].copy_from_slice(&next.to_le_bytes());
                let arg: ObjectRef<Bytes> = shoal::put(&Bytes(v))?;
                consume.remote(&arg, work_ms)
            };
            inflight.push_back((next, r));
            next += 1;
        }
        let Some((i, r)) = inflight.pop_front() else {
            break;
        };
        match r.get_blocking_timeout(Duration::from_secs(120)) {
            Ok((nonce, peer)) => {
                anyhow::ensure!(nonce == i, "task {i} saw nonce {nonce}");
                *per_peer.entry(peer).or_default() += 1;
                ok += 1;
            }
            Err(e) => {
                let msg = e.to_string();
                eprintln!("task {i} failed: {msg}");
                let key: String = msg
                    .chars()
                    .filter(|c| !c.is_ascii_hexdigit())
                    .take(120)
                    .collect();
                *errors.entry(key).or_default() += 1;
            }
        }
    }
    let failed: u64 = errors.values().sum();
    println!(
        "{n} tasks ({mode}, window {window}) in {:.1} s: {ok} ok, {failed} failed",
        start.elapsed().as_secs_f64()
    );
    for (p, c) in &per_peer {
        println!("  ran on {p}: {c}");
    }
    for (e, c) in &errors {
        println!("  {c} x {e}");
    }
    Ok(())
}
