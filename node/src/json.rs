//! The state API's answers as JSON, as `shoal list --json` prints them and the dashboard
//! reads them: each row an object of its fields, and for each `X_ago_us` field an `X_at_ms`
//! (milliseconds since the Unix epoch, from this machine's clock at the time of the answer).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use shoal_protocol::state::{Cell, StateReply};

/// Milliseconds since the Unix epoch of a time `ago_us` microseconds before `now`.
pub fn unix_ms(now: SystemTime, ago_us: u64) -> u64 {
    let at = now
        .checked_sub(Duration::from_micros(ago_us))
        .unwrap_or(UNIX_EPOCH);
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A cell as JSON.
pub fn cell(c: &Cell) -> Value {
    match c {
        Cell::Text(s) => json!(s),
        Cell::Num(n) => json!(n),
        Cell::None => Value::Null,
        Cell::List(v) => json!(v),
    }
}

/// A row as JSON: its fields, and for each `X_ago_us` an `X_at_ms`.
pub fn row(cells: &[(&'static str, Cell)], now: SystemTime) -> Value {
    let mut m = serde_json::Map::new();
    for (k, c) in cells {
        m.insert(k.to_string(), cell(c));
        if let (Some(stem), Cell::Num(ago)) = (k.strip_suffix("_ago_us"), c) {
            m.insert(format!("{stem}_at_ms"), json!(unix_ms(now, *ago)));
        }
    }
    Value::Object(m)
}

/// A whole reply: its rows, counts, summary, and which peers answered and which did not.
pub fn reply(reply: &StateReply) -> Value {
    let now = SystemTime::now();
    json!({
        "kind": reply.rows.kind().name(),
        "rows": reply.rows.cells().iter().map(|r| row(r, now)).collect::<Vec<_>>(),
        "matched": reply.matched,
        "summary": reply.summary.iter().map(|s| json!({
            "group": s.group, "state": s.state, "count": s.count, "bytes": s.bytes,
        })).collect::<Vec<_>>(),
        "answered": reply.answered,
        "missing": reply.missing,
        "partial": reply.partial(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_become_clock_times() {
        let now = UNIX_EPOCH + Duration::from_secs(100);
        let v = row(
            &[("x_ago_us", Cell::Num(2_000_000)), ("y", Cell::None)],
            now,
        );
        assert_eq!(v["x_at_ms"], 98_000);
        assert_eq!(v["x_ago_us"], 2_000_000);
        assert!(v["y"].is_null());
    }
}
