//! `shoal list`, `shoal summary`, `shoal get` and `shoal timeline`: the state of the mesh,
//! asked of the local node, which asks every other peer (there is no head).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use shoal_node::json;
use shoal_protocol::state::{
    Cell, Filter, Row, StateKind, StateQuery, StateReply, StateRows, TaskRow, MAX_STATE_LIMIT,
};
use shoal_protocol::{ToClient, ToNode};

/// How a question is asked.
pub(crate) struct Ask<'a> {
    /// The node's socket.
    pub(crate) socket: &'a Path,
    /// How long the node waits for the other peers.
    pub(crate) timeout: Duration,
    /// This node only.
    pub(crate) local: bool,
}

/// Asks the node `query` and returns the merged answer.
pub(crate) fn ask_state(ask: &Ask<'_>, query: StateQuery) -> Result<StateReply> {
    query.check()?;
    let timeout_ms = u32::try_from(ask.timeout.as_millis()).unwrap_or(u32::MAX);
    let msg = ToNode::State {
        request: 1,
        query,
        timeout_ms,
        local: ask.local,
    };
    // The node answers at its deadline at the latest.
    let answer = super::ask(ask.socket, msg, ask.timeout + Duration::from_secs(10))?;
    let ToClient::State { reply, .. } = answer else {
        bail!("unexpected answer");
    };
    Ok(*reply?)
}

/// Parses `KEY=VALUE` filters.
pub(crate) fn filters(raw: &[String]) -> Result<Vec<Filter>> {
    raw.iter()
        .map(|f| f.parse::<Filter>().map_err(Into::into))
        .collect()
}

/// Says on stderr which peers did not answer, if any.
fn warn_partial(reply: &StateReply) {
    if reply.partial() {
        eprintln!(
            "warning: partial answer: {} of {} peers did not answer in time: {}",
            reply.missing.len(),
            reply.missing.len() + reply.answered.len(),
            reply.missing.join(", ")
        );
    }
}

/// The columns a table shows for each kind (all fields are in `--json`).
fn columns(kind: StateKind) -> &'static [&'static str] {
    match kind {
        StateKind::Tasks => &["task_id", "function", "state", "node", "age", "run", "why"],
        StateKind::Actors => &[
            "actor_id",
            "class",
            "name",
            "state",
            "node",
            "pid",
            "restarts",
            "calls_pending",
            "calls_done",
            "reason",
        ],
        StateKind::Objects => &[
            "object_id",
            "node",
            "size",
            "location",
            "owner",
            "holders",
            "pinned_by",
        ],
        StateKind::Peers => &[
            "node",
            "total",
            "free",
            "queued",
            "running",
            "finished",
            "tasks_per_s",
            "workers",
            "actors",
            "store_used",
            "store_capacity",
            "spilled_bytes",
        ],
        StateKind::Workers => &["node", "worker_id", "pid", "state", "tasks_done", "binary"],
        StateKind::Logs => &["node", "pid", "function", "stream", "text"],
        StateKind::Groups => &[
            "group_id", "node", "state", "strategy", "age", "bundles", "sites",
        ],
    }
}

/// A duration in microseconds, short.
pub(crate) fn human_us(us: u64) -> String {
    if us < 1_000 {
        format!("{us}us")
    } else if us < 1_000_000 {
        format!("{:.1}ms", us as f64 / 1e3)
    } else if us < 120_000_000 {
        format!("{:.1}s", us as f64 / 1e6)
    } else if us < 7_200_000_000 {
        format!("{:.0}m", us as f64 / 6e7)
    } else {
        format!("{:.0}h", us as f64 / 3.6e9)
    }
}

/// The derived columns of a task: how long ago it arrived, how long it ran, why it waits.
fn task_extra(cells: &[(&'static str, Cell)], column: &str) -> Option<String> {
    let get = |k: &str| cells.iter().find(|(n, _)| *n == k).map(|(_, c)| c);
    let num = |k: &str| match get(k) {
        Some(Cell::Num(n)) => Some(*n),
        _ => None,
    };
    match column {
        "age" => num("arrived_ago_us")
            .or_else(|| num("created_ago_us"))
            .map(human_us),
        // A group's bundles, each in braces (a bundle lists several resources).
        "bundles" => match get("bundles") {
            Some(Cell::List(v)) => Some(
                v.iter()
                    .map(|b| format!("{{{b}}}"))
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
            _ => None,
        },
        "run" => match (num("started_ago_us"), num("ended_ago_us")) {
            (Some(s), Some(e)) => Some(human_us(s.saturating_sub(e))),
            (Some(s), None) => Some(format!("{}+", human_us(s))),
            _ => Some("-".into()),
        },
        "why" => match (get("error"), get("reason")) {
            (Some(Cell::Text(e)), _) => Some(e.clone()),
            (_, Some(Cell::Text(r))) => Some(r.clone()),
            _ => Some(String::new()),
        },
        _ => None,
    }
}

/// Writes rows as a table: ids cut only as far as they stay distinct.
fn write_table(out: &mut impl Write, rows: &StateRows) -> std::io::Result<()> {
    let kind = rows.kind();
    let cols = columns(kind);
    let all = rows.cells();
    let mut text: Vec<Vec<String>> = all
        .iter()
        .map(|cells| {
            cols.iter()
                .map(|c| {
                    task_extra(cells, c).unwrap_or_else(|| {
                        cells
                            .iter()
                            .find(|(n, _)| n == c)
                            .map_or_else(String::new, |(_, v)| v.to_string())
                    })
                })
                .collect()
        })
        .collect();
    // Ids and peer ids: cut to the width at which they stay apart (at least 8).
    for (i, c) in cols.iter().enumerate() {
        if c.ends_with("_id") || *c == "node" || *c == "binary" || *c == "owner" {
            let cut = super::short_ids(text.iter().map(|r| r[i].clone()), 8);
            for (r, id) in text.iter_mut().zip(cut) {
                r[i] = id;
            }
        }
        if *c == "sites" {
            // A group's peers, one per bundle: cut as the node column is.
            let sites: Vec<Vec<String>> = all
                .iter()
                .map(|cells| match cells.iter().find(|(n, _)| *n == "sites") {
                    Some((_, Cell::List(v))) => v.clone(),
                    _ => Vec::new(),
                })
                .collect();
            let names = sites.iter().flatten().map(String::as_str);
            let width = shoal_protocol::state::unique_width(names, 8);
            for (r, v) in text.iter_mut().zip(sites) {
                let cut: Vec<String> = v.iter().map(|s| s.chars().take(width).collect()).collect();
                r[i] = cut.join(",");
            }
        }
    }
    let header: Vec<String> = cols.iter().map(|c| c.to_ascii_uppercase()).collect();
    let mut widths: Vec<usize> = header.iter().map(String::len).collect();
    for r in &text {
        for (w, v) in widths.iter_mut().zip(r) {
            *w = (*w).max(v.chars().count());
        }
    }
    let last = cols.len() - 1;
    let line = |out: &mut dyn Write, r: &[String]| -> std::io::Result<()> {
        for (i, v) in r.iter().enumerate() {
            if i == last {
                writeln!(out, "{v}")?;
            } else {
                write!(out, "{v:<w$}  ", w = widths[i])?;
            }
        }
        Ok(())
    };
    line(out, &header)?;
    for r in &text {
        line(out, r)?;
    }
    Ok(())
}

/// `shoal list KIND`.
pub(crate) fn list(ask: &Ask<'_>, query: StateQuery, json: bool) -> Result<()> {
    let reply = ask_state(ask, query)?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", json::reply(&reply))?;
    } else {
        write_table(&mut out, &reply.rows)?;
        writeln!(
            out,
            "{} of {} {} shown; {} peers answered",
            reply.rows.len(),
            reply.matched,
            reply.rows.kind(),
            reply.answered.len()
        )?;
    }
    warn_partial(&reply);
    Ok(())
}

/// `shoal summary KIND`.
pub(crate) fn summary(ask: &Ask<'_>, mut query: StateQuery, json: bool) -> Result<()> {
    query.summary = true;
    let kind = query.kind;
    let reply = ask_state(ask, query)?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", json::reply(&reply))?;
        warn_partial(&reply);
        return Ok(());
    }
    // One line per group: its total, then its count in each state.
    let mut groups: BTreeMap<&str, (u64, u64, Vec<String>)> = BTreeMap::new();
    for s in &reply.summary {
        let g = groups.entry(&s.group).or_default();
        g.0 += s.count;
        g.1 += s.bytes;
        if !s.state.is_empty() {
            g.2.push(format!("{}: {}", s.state, s.count));
        }
    }
    let label = match kind {
        StateKind::Tasks => "FUNCTION",
        StateKind::Actors => "CLASS",
        _ => "LOCATION",
    };
    let width = groups
        .keys()
        .map(|g| g.len())
        .max()
        .unwrap_or(0)
        .max(label.len());
    if kind == StateKind::Objects {
        writeln!(out, "{label:<width$}  {:>8}  {:>14}", "COUNT", "BYTES")?;
        for (g, (n, bytes, _)) in &groups {
            writeln!(out, "{g:<width$}  {n:>8}  {bytes:>14}")?;
        }
    } else {
        writeln!(out, "{label:<width$}  {:>8}  STATES", "TOTAL")?;
        for (g, (n, _, states)) in &groups {
            writeln!(out, "{g:<width$}  {n:>8}  {}", states.join(", "))?;
        }
    }
    writeln!(
        out,
        "{} {kind} in all; {} peers answered",
        reply.matched,
        reply.answered.len()
    )?;
    warn_partial(&reply);
    Ok(())
}

/// Finds the one `kind` whose id starts with `id` (any worker of that id will do), with
/// the answer that named it.
pub(crate) fn resolve(ask: &Ask<'_>, kind: StateKind, id: &str) -> Result<(String, StateReply)> {
    let key = match kind {
        StateKind::Tasks => "task_id",
        StateKind::Actors => "actor_id",
        StateKind::Objects => "object_id",
        StateKind::Workers => "worker_id",
        StateKind::Peers => "node",
        StateKind::Logs => bail!("lines have no id: `shoal logs --task ID` shows a task's"),
        StateKind::Groups => "group_id",
    };
    if id.len() < 4 {
        bail!("an id of at least 4 characters, please");
    }
    let mut query = StateQuery::new(kind);
    query.filters = vec![Filter {
        key: key.into(),
        negate: false,
        value: id.to_string(),
    }];
    query.limit = MAX_STATE_LIMIT;
    let reply = ask_state(ask, query)?;
    let cells = reply.rows.cells();
    let mut ids: Vec<String> = cells
        .iter()
        .filter_map(|r| {
            r.iter()
                .find(|(k, _)| *k == key)
                .map(|(_, c)| c.to_string())
        })
        .collect();
    ids.sort();
    ids.dedup();
    if ids.is_empty() {
        warn_partial(&reply);
        bail!(
            "no {} {id} in the mesh{}",
            kind.name().trim_end_matches('s'),
            if reply.partial() {
                " (some peers did not answer)"
            } else {
                ""
            }
        );
    }
    if ids.len() > 1 && kind != StateKind::Workers {
        bail!("{id} is the start of {} ids: {}", ids.len(), ids.join(", "));
    }
    Ok((ids.swap_remove(0), reply))
}

/// `shoal get KIND ID`: every row of that id (an object has one per peer that holds it).
pub(crate) fn get(ask: &Ask<'_>, kind: StateKind, id: &str, json: bool) -> Result<()> {
    let (_, reply) = resolve(ask, kind, id)?;
    let cells = reply.rows.cells();
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", json::reply(&reply))?;
    } else {
        let now = SystemTime::now();
        for (i, row) in cells.iter().enumerate() {
            if i > 0 {
                writeln!(out)?;
            }
            let width = row.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
            for (k, c) in row {
                match (k.strip_suffix("_ago_us"), c) {
                    (Some(stem), Cell::Num(ago)) => writeln!(
                        out,
                        "{k:<width$}  {} ago ({stem} at {} ms since the epoch)",
                        human_us(*ago),
                        json::unix_ms(now, *ago)
                    )?,
                    _ => writeln!(out, "{k:<width$}  {c}")?,
                }
            }
        }
    }
    warn_partial(&reply);
    Ok(())
}

/// A Chrome trace (the JSON Perfetto and chrome://tracing open) of tasks: one process per
/// peer, one thread per worker process, one slice per task run, with the time it waited
/// for its arguments and for a worker in its arguments.
pub(crate) fn trace(tasks: &[TaskRow], now: SystemTime) -> serde_json::Value {
    let mut nodes: BTreeMap<&str, usize> = BTreeMap::new();
    for t in tasks {
        let n = nodes.len() + 1;
        nodes.entry(t.node.as_str()).or_insert(n);
    }
    let mut events = Vec::new();
    for (node, pid) in &nodes {
        events.push(serde_json::json!({
            "name": "process_name", "ph": "M", "pid": pid,
            "args": { "name": format!("peer {node}") },
        }));
    }
    let epoch_us = |ago: u64| -> u64 {
        now.checked_sub(Duration::from_micros(ago))
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_micros() as u64)
    };
    for t in tasks {
        let (Some(started), Some(ended)) = (t.times.started_ago_us, t.times.ended_ago_us) else {
            continue;
        };
        let ready = t.times.ready_ago_us.unwrap_or(t.times.arrived_ago_us);
        events.push(serde_json::json!({
            "name": t.function,
            "cat": t.kind.name(),
            "ph": "X",
            "ts": epoch_us(started),
            "dur": started.saturating_sub(ended),
            "pid": nodes[t.node.as_str()],
            "tid": t.worker_pid.unwrap_or(0),
            "args": {
                "task_id": t.task_id.to_hex(),
                "state": t.state.name(),
                "node": t.node,
                "owner": t.owner.to_string(),
                "fetch_us": t.times.arrived_ago_us.saturating_sub(ready),
                "queued_us": ready.saturating_sub(started),
                "error": t.error,
            },
        }));
    }
    serde_json::json!({ "traceEvents": events, "displayTimeUnit": "ms" })
}

/// `shoal timeline --out FILE`.
pub(crate) fn timeline(ask: &Ask<'_>, out: &Path, limit: u32, as_json: bool) -> Result<()> {
    let mut query = StateQuery::new(StateKind::Tasks);
    query.limit = limit;
    let reply = ask_state(ask, query)?;
    let StateRows::Tasks(tasks) = &reply.rows else {
        bail!("the node answered with rows of another kind");
    };
    let json = trace(tasks, SystemTime::now());
    let slices = json["traceEvents"]
        .as_array()
        .map_or(0, |v| v.iter().filter(|e| e["ph"] == "X").count());
    let bytes = serde_json::to_vec(&json)?;
    std::fs::write(out, bytes).with_context(|| format!("writing {}", out.display()))?;
    if as_json {
        let v = serde_json::json!({
            "out": out, "task_runs": slices, "answered": reply.answered.len(),
            "partial": reply.partial(),
        });
        println!("{v}");
        warn_partial(&reply);
        return Ok(());
    }
    println!(
        "{slices} task runs from {} peers written to {} (open it in https://ui.perfetto.dev or chrome://tracing)",
        reply.answered.len(),
        out.display()
    );
    warn_partial(&reply);
    Ok(())
}

/// How long a task must have waited to show in `shoal status`.
pub(crate) const WAITING_SHOWN: Duration = Duration::from_secs(5);

/// Tasks and actor creations anywhere in the mesh waiting for resources longer than
/// [`WAITING_SHOWN`], or why they could not be asked.
pub(crate) fn waiting(ask: &Ask<'_>) -> Result<(Vec<TaskRow>, StateReply)> {
    let mut query = StateQuery::new(StateKind::Tasks);
    query.filters = vec!["state=PENDING_NODE_ASSIGNMENT".parse()?];
    query.limit = 1_000;
    let reply = ask_state(ask, query)?;
    let StateRows::Tasks(rows) = &reply.rows else {
        bail!("the node answered with rows of another kind");
    };
    let shown = WAITING_SHOWN.as_micros() as u64;
    let old: Vec<TaskRow> = rows
        .iter()
        .filter(|t| t.times.arrived_ago_us >= shown)
        .cloned()
        .collect();
    Ok((old, reply))
}

/// The `waiting` member of `shoal status --json`.
pub(crate) fn waiting_json(waiting: &Result<(Vec<TaskRow>, StateReply)>) -> serde_json::Value {
    match waiting {
        Ok((rows, reply)) => {
            let now = SystemTime::now();
            let list: Vec<_> = rows.iter().map(|r| json::row(&r.cells(), now)).collect();
            serde_json::json!({ "tasks": list, "partial": reply.partial(), "missing": reply.missing })
        }
        Err(e) => serde_json::json!({ "error": format!("{e:#}") }),
    }
}

/// The waiting section of `shoal status`: one line per kind of waiting work.
pub(crate) fn print_waiting(waiting: &Result<(Vec<TaskRow>, StateReply)>) {
    let (rows, reply) = match waiting {
        Ok(w) => w,
        Err(e) => {
            println!("waiting   (the mesh could not be asked: {e:#})");
            return;
        }
    };
    let mut groups: BTreeMap<(&str, &str, String, &str), (u64, u64)> = BTreeMap::new();
    for t in rows {
        let g = groups
            .entry((
                t.kind.name(),
                t.function.as_str(),
                t.resources.to_string(),
                t.reason.as_deref().unwrap_or(""),
            ))
            .or_default();
        g.0 += 1;
        g.1 = g.1.max(t.times.arrived_ago_us);
    }
    println!(
        "waiting   {} tasks and actors for resources for over {}s, in the whole mesh{}",
        rows.len(),
        WAITING_SHOWN.as_secs(),
        if reply.partial() {
            format!(" ({} peers did not answer)", reply.missing.len())
        } else {
            String::new()
        }
    );
    for ((kind, function, demand, reason), (n, longest)) in groups {
        println!(
            "  {n} x {kind} {function} needs {demand}, longest {}: {reason}",
            human_us(longest)
        );
    }
}

/// `shoal logs`: the lines kept by the peers for a task, an actor or a peer (or all), oldest
/// first; with `follow`, then every new line until interrupted.
pub(crate) fn logs(
    ask: &Ask<'_>,
    filters: Vec<Filter>,
    limit: u32,
    follow: bool,
    json: bool,
) -> Result<()> {
    let mut query = StateQuery::new(StateKind::Logs);
    query.filters = filters;
    query.limit = limit;
    // The newest line printed, per peer.
    let mut printed: BTreeMap<String, u64> = BTreeMap::new();
    let mut warned = false;
    loop {
        let reply = ask_state(ask, query.clone())?;
        let StateRows::Logs(rows) = &reply.rows else {
            bail!("the node answered with rows of another kind");
        };
        let mut out = std::io::stdout().lock();
        let now = SystemTime::now();
        for r in rows {
            let last = printed.entry(r.line.node.clone()).or_default();
            if r.seq <= *last {
                continue;
            }
            *last = r.seq;
            if json {
                writeln!(out, "{}", json::row(&r.cells(), now))?;
            } else {
                writeln!(out, "{} {}", r.line.prefix(), r.line.text)?;
            }
        }
        out.flush()?;
        if reply.partial() && !warned {
            warn_partial(&reply);
            warned = true;
        }
        if !follow {
            return Ok(());
        }
        std::thread::sleep(FOLLOW_EVERY);
    }
}

/// How often `shoal logs --follow` asks for new lines.
const FOLLOW_EVERY: Duration = Duration::from_secs(1);
