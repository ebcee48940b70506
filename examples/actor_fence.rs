//! A named, detached actor that says where it runs, and a driver that calls it for a while
//! (the network lab's fencing test, issue 12 item 4): each answer is printed as
//! `answer <unix ms> <peer id of the node that ran the call>`, each failure as
//! `failed <unix ms> <error>`.
//!
//! Run with: `SHOAL_SOCKET=<node socket> cargo run --release --example actor_fence --
//! (create | find) NAME SECONDS`: `create` makes the actor (one restart), prints
//! `host <peer id>` once it answered, then calls it; `find` looks it up by name (retrying
//! until found, for up to 30 s) and calls it.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use shoal::{ActorHandle, ActorOptions};

/// Says where it runs.
#[derive(Default)]
pub struct Where;

#[shoal::actor]
impl Where {
    /// The actor.
    pub fn new() -> Self {
        Where
    }

    /// The peer id of the node this call ran on.
    pub fn peer(&self) -> String {
        shoal::peer_id().unwrap_or_default()
    }
}

/// Milliseconds since the Unix epoch.
fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
}

/// How long one call may take before it counts as failed (and the next is made).
const CALL_BOUND: Duration = Duration::from_secs(20);

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [mode, name, seconds] = args.as_slice() else {
        bail!("usage: actor_fence (create | find) NAME SECONDS");
    };
    let seconds: f64 = seconds.parse().context("SECONDS")?;
    shoal::init()?;
    let actor: ActorHandle<Where> = match mode.as_str() {
        "create" => {
            // A CPU: on a mesh whose driver's node has none, it lives on a peer.
            let options = ActorOptions::new()
                .num_cpus(1.0)
                .name(name.as_str())
                .detached(true)
                .max_restarts(1);
            let actor = Where::options(options).try_remote()?;
            let host = actor.peer().get_blocking()?;
            println!("host {host}");
            actor
        }
        "find" => {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                match shoal::get_actor::<Where>(name) {
                    Ok(a) => break a,
                    Err(e) if Instant::now() < deadline => {
                        eprintln!("not found yet: {e}");
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    Err(e) => return Err(e).context("looking the actor up"),
                }
            }
        }
        other => bail!("unknown mode {other:?}"),
    };
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    while Instant::now() < end {
        match actor.peer().get_blocking_timeout(CALL_BOUND) {
            Ok(peer) => println!("answer {} {peer}", unix_ms()),
            Err(e) => println!("failed {} {e}", unix_ms()),
        }
        // Paced: the answers sample where the actor is over time.
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}
