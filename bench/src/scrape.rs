//! Metrics on during a run (`shoal-bench --metrics`): every node the rows use serves its
//! Prometheus metrics (`SHOAL_METRICS=127.0.0.1:0`, read by the embedded node and by
//! `shoal node`), and a thread scrapes each of them every [`INTERVAL`] while the rows run,
//! far more often than Prometheus would (15 s by default), so that the cost of serving them
//! shows. `--metrics-compare` runs each row twice, metrics off then on (see `main.rs`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Mutex;
use std::time::Duration;

/// Set in the environment of a run with metrics on.
pub const ENV: &str = "SHOAL_BENCH_METRICS";

/// How often each node is scraped.
pub const INTERVAL: Duration = Duration::from_millis(100);

/// The endpoints to scrape.
static ADDRS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Whether this run has metrics on.
pub fn enabled() -> bool {
    std::env::var_os(ENV).is_some_and(|v| v == "on")
}

/// Scrapes `addr` (a node's `metrics` in its status) from now on, if metrics are on.
pub fn watch(addr: Option<&str>) {
    let Some(addr) = addr.filter(|_| enabled()) else {
        return;
    };
    let mut addrs = ADDRS.lock().unwrap_or_else(|e| e.into_inner());
    if !addrs.iter().any(|a| a == addr) {
        eprintln!("metrics: scraping http://{addr}/metrics every {INTERVAL:?}");
        addrs.push(addr.to_owned());
    }
}

/// Starts the scraping thread (for the whole run).
pub fn start() -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("scraper".into())
        .spawn(|| loop {
            std::thread::sleep(INTERVAL);
            let addrs = ADDRS.lock().unwrap_or_else(|e| e.into_inner()).clone();
            for addr in addrs {
                if let Err(e) = scrape(&addr) {
                    // A node of a row that ended: scraped no more.
                    eprintln!("metrics: {addr} no longer answers ({e}); dropped");
                    ADDRS
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .retain(|a| *a != addr);
                }
            }
        })
        .map(|_| ())
}

/// One scrape, read to the end; an error unless it is a 200 with a body.
fn scrape(addr: &str) -> std::io::Result<()> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n")?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    if out.starts_with(b"HTTP/1.1 200") && out.ends_with(b"# EOF\n") {
        Ok(())
    } else {
        Err(std::io::Error::other("not a scrape"))
    }
}
