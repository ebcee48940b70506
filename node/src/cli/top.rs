//! `shoal top`: a live view of the mesh in the terminal, refreshed every second: each peer's
//! CPUs, other resources, queue, running tasks, tasks per second, store use, spill, workers,
//! actors and the round trip to it; keys sort the peers and drill into one peer's tasks and
//! actors. Drawn with ratatui; every figure comes from the state API (`shoal list peers`,
//! asked of every peer) and this node's status (round trips, as it sees them).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph, Row, Table, TableState};
use ratatui::Frame;
use shoal_protocol::state::{ActorRow, PeerRow, StateKind, StateQuery, StateRows, TaskRow};
use shoal_protocol::{ResourceSet, ToClient, ToNode, CPU};

use super::state::{ask_state, human_us, Ask};

/// How the peers are ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sort {
    Peer,
    FreeCpu,
    Queue,
    Running,
    Rate,
    Store,
}

impl Sort {
    const ALL: [Sort; 6] = [
        Sort::Peer,
        Sort::FreeCpu,
        Sort::Queue,
        Sort::Running,
        Sort::Rate,
        Sort::Store,
    ];

    fn name(self) -> &'static str {
        match self {
            Sort::Peer => "peer",
            Sort::FreeCpu => "free cpu",
            Sort::Queue => "queue",
            Sort::Running => "running",
            Sort::Rate => "tasks/s",
            Sort::Store => "store",
        }
    }

    fn next(self) -> Sort {
        let i = Sort::ALL.iter().position(|s| *s == self).unwrap_or(0);
        Sort::ALL[(i + 1) % Sort::ALL.len()]
    }
}

/// What the screen shows.
struct App {
    peers: Vec<PeerRow>,
    /// Round trips from this node, by peer id.
    rtt: HashMap<String, Option<u64>>,
    /// This node's peer id (or node id).
    me: String,
    missing: Vec<String>,
    error: Option<String>,
    sort: Sort,
    table: TableState,
    /// The peer drilled into, with its tasks and actors.
    drill: Option<(String, Vec<TaskRow>, Vec<ActorRow>)>,
}

/// `shoal top`, until `q`.
pub(crate) fn run(ask: &Ask<'_>, every: Duration) -> Result<()> {
    let mut terminal = ratatui::init();
    let result = run_on(&mut terminal, ask, every);
    ratatui::restore();
    result
}

fn run_on(terminal: &mut ratatui::DefaultTerminal, ask: &Ask<'_>, every: Duration) -> Result<()> {
    let mut app = App {
        peers: Vec::new(),
        rtt: HashMap::new(),
        me: String::new(),
        missing: Vec::new(),
        error: None,
        sort: Sort::Peer,
        table: TableState::default().with_selected(Some(0)),
        drill: None,
    };
    let mut next = Instant::now();
    loop {
        if Instant::now() >= next {
            app.refresh(ask);
            next = Instant::now() + every;
        }
        terminal.draw(|f| app.draw(f))?;
        let wait = next.saturating_duration_since(Instant::now());
        if !event::poll(wait.min(Duration::from_millis(250)))? {
            continue;
        }
        let Event::Key(key) = event::read()? else {
            continue;
        };
        if key.kind != KeyEventKind::Press {
            continue;
        }
        match key.code {
            KeyCode::Char('q') => return Ok(()),
            KeyCode::Esc if app.drill.is_some() => app.drill = None,
            KeyCode::Esc => return Ok(()),
            KeyCode::Char('s') => {
                app.sort = app.sort.next();
                app.order();
            }
            KeyCode::Down | KeyCode::Char('j') => {
                let n = app.peers.len().max(1);
                let i = app.table.selected().unwrap_or(0);
                app.table.select(Some((i + 1).min(n - 1)));
            }
            KeyCode::Up | KeyCode::Char('k') => {
                let i = app.table.selected().unwrap_or(0);
                app.table.select(Some(i.saturating_sub(1)));
            }
            KeyCode::Enter => {
                let i = app.table.selected().unwrap_or(0);
                if let Some(p) = app.peers.get(i) {
                    app.drill = Some((p.node.clone(), Vec::new(), Vec::new()));
                    next = Instant::now();
                }
            }
            _ => {}
        }
    }
}

fn free_of(p: &PeerRow) -> u64 {
    p.free.get_milli(CPU)
}

/// `free/total` of one resource, in units.
fn of(free: &ResourceSet, total: &ResourceSet, name: &str) -> String {
    let f = free.get_milli(name) as f64 / 1000.0;
    let t = total.get_milli(name) as f64 / 1000.0;
    format!("{f}/{t}")
}

fn mib(bytes: u64) -> String {
    format!("{:.0}", bytes as f64 / (1 << 20) as f64)
}

impl App {
    fn refresh(&mut self, ask: &Ask<'_>) {
        self.error = None;
        match ask_state(ask, StateQuery::new(StateKind::Peers)) {
            Ok(reply) => {
                if let StateRows::Peers(rows) = reply.rows {
                    self.peers = rows;
                }
                self.missing = reply.missing;
                self.order();
            }
            Err(e) => self.error = Some(format!("{e:#}")),
        }
        match super::ask(ask.socket, ToNode::Status { request: 1 }, super::WAIT) {
            Ok(ToClient::Status { status, .. }) => {
                self.me = status.node_id.to_hex();
                if let Some(mesh) = &status.mesh {
                    self.me.clone_from(&mesh.peer_id);
                    self.rtt = mesh
                        .peers
                        .iter()
                        .map(|p| (p.peer_id.clone(), p.rtt_us))
                        .collect();
                }
            }
            Ok(_) => {}
            Err(e) => self.error = Some(format!("{e:#}")),
        }
        if let Some((node, tasks, actors)) = &mut self.drill {
            let filter = format!("node={node}").parse().ok();
            let mut q = StateQuery::new(StateKind::Tasks);
            q.filters.extend(filter.clone());
            if let Ok(r) = ask_state(ask, q) {
                if let StateRows::Tasks(rows) = r.rows {
                    *tasks = rows;
                }
            }
            let mut q = StateQuery::new(StateKind::Actors);
            q.filters.extend(filter);
            if let Ok(r) = ask_state(ask, q) {
                if let StateRows::Actors(rows) = r.rows {
                    *actors = rows;
                }
            }
        }
    }

    fn order(&mut self) {
        let by = self.sort;
        self.peers.sort_by(|a, b| match by {
            Sort::Peer => a.node.cmp(&b.node),
            Sort::FreeCpu => free_of(b).cmp(&free_of(a)),
            Sort::Queue => b.queued.cmp(&a.queued),
            Sort::Running => b.running.cmp(&a.running),
            Sort::Rate => b.tasks_per_s.cmp(&a.tasks_per_s),
            Sort::Store => b.store_used.cmp(&a.store_used),
        });
    }

    fn draw(&mut self, f: &mut Frame) {
        let [head, body, foot] = Layout::vertical([
            Constraint::Length(2),
            Constraint::Min(3),
            Constraint::Length(1),
        ])
        .areas(f.area());
        let cpus: u64 = self.peers.iter().map(|p| p.total.get_milli(CPU)).sum();
        let free: u64 = self.peers.iter().map(free_of).sum();
        let rate: u64 = self.peers.iter().map(|p| p.tasks_per_s).sum();
        let mut lines = vec![Line::from(format!(
            "shoal top  {} peers  CPU {}/{} free  {} tasks/s  seen from {}",
            self.peers.len(),
            free as f64 / 1000.0,
            cpus as f64 / 1000.0,
            rate,
            self.me.chars().take(20).collect::<String>()
        ))];
        if let Some(e) = &self.error {
            lines.push(Line::from(format!("error: {e}")));
        } else if !self.missing.is_empty() {
            lines.push(Line::from(format!(
                "partial: {} peers did not answer: {}",
                self.missing.len(),
                self.missing.join(", ")
            )));
        }
        f.render_widget(Paragraph::new(lines), head);
        let keys = if self.drill.is_some() {
            "[esc] back  [q] quit".to_string()
        } else {
            format!(
                "[s] sort: {}  [up/down] select  [enter] tasks and actors  [q] quit",
                self.sort.name()
            )
        };
        f.render_widget(Paragraph::new(keys), foot);
        match &self.drill {
            Some((node, tasks, actors)) => draw_peer(f, body, node, tasks, actors),
            None => self.draw_peers(f, body),
        }
    }

    fn draw_peers(&mut self, f: &mut Frame, area: ratatui::layout::Rect) {
        let ids = super::short_ids(self.peers.iter().map(|p| p.node.clone()), 12);
        let rows: Vec<Row> = self
            .peers
            .iter()
            .zip(ids)
            .map(|(p, id)| {
                let others: Vec<String> = p
                    .total
                    .0
                    .keys()
                    .filter(|k| k.as_str() != CPU)
                    .map(|k| format!("{k}={}", of(&p.free, &p.total, k)))
                    .collect();
                let rtt = if p.node == self.me {
                    "self".to_string()
                } else {
                    match self.rtt.get(&p.node) {
                        Some(Some(us)) => human_us(*us),
                        _ => "-".into(),
                    }
                };
                Row::new(vec![
                    id,
                    of(&p.free, &p.total, CPU),
                    others.join(" "),
                    p.queued.to_string(),
                    p.running.to_string(),
                    p.tasks_per_s.to_string(),
                    format!("{}/{}", mib(p.store_used), mib(p.store_capacity)),
                    mib(p.spilled_bytes),
                    p.workers.to_string(),
                    p.actors.to_string(),
                    rtt,
                ])
            })
            .collect();
        let header = Row::new(vec![
            "PEER",
            "CPU FREE",
            "RESOURCES",
            "QUEUE",
            "RUNNING",
            "TASKS/S",
            "STORE MIB",
            "SPILL MIB",
            "WORKERS",
            "ACTORS",
            "RTT",
        ])
        .style(Style::new().add_modifier(Modifier::BOLD));
        let widths = [
            Constraint::Length(14),
            Constraint::Length(9),
            Constraint::Min(10),
            Constraint::Length(6),
            Constraint::Length(8),
            Constraint::Length(8),
            Constraint::Length(11),
            Constraint::Length(9),
            Constraint::Length(8),
            Constraint::Length(7),
            Constraint::Length(8),
        ];
        let table = Table::new(rows, widths)
            .header(header)
            .block(Block::bordered().title("peers"))
            .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
        f.render_stateful_widget(table, area, &mut self.table);
    }
}

fn draw_peer(
    f: &mut Frame,
    area: ratatui::layout::Rect,
    node: &str,
    tasks: &[TaskRow],
    actors: &[ActorRow],
) {
    let [top, bottom] =
        Layout::vertical([Constraint::Percentage(60), Constraint::Percentage(40)]).areas(area);
    let ids = super::short_ids(tasks.iter().map(|t| t.task_id.to_hex()), 8);
    let rows: Vec<Row> = tasks
        .iter()
        .zip(ids)
        .map(|(t, id)| {
            Row::new(vec![
                id,
                t.function.clone(),
                t.state.name().to_string(),
                human_us(t.times.arrived_ago_us),
                t.error.clone().or(t.reason.clone()).unwrap_or_default(),
            ])
        })
        .collect();
    let table = Table::new(
        rows,
        [
            Constraint::Length(12),
            Constraint::Length(28),
            Constraint::Length(24),
            Constraint::Length(8),
            Constraint::Min(10),
        ],
    )
    .header(
        Row::new(vec!["TASK", "FUNCTION", "STATE", "AGE", "WHY"])
            .style(Style::new().add_modifier(Modifier::BOLD)),
    )
    .block(Block::bordered().title(format!("tasks of {node}")));
    f.render_widget(table, top);
    let ids = super::short_ids(actors.iter().map(|a| a.actor_id.to_hex()), 8);
    let rows: Vec<Row> = actors
        .iter()
        .zip(ids)
        .map(|(a, id)| {
            Row::new(vec![
                id,
                a.class.clone(),
                a.name.clone().unwrap_or_default(),
                a.state.clone(),
                a.calls_done.to_string(),
                a.calls_pending.to_string(),
            ])
        })
        .collect();
    let table = Table::new(
        rows,
        [
            Constraint::Length(12),
            Constraint::Length(28),
            Constraint::Length(16),
            Constraint::Length(18),
            Constraint::Length(8),
            Constraint::Length(8),
        ],
    )
    .header(
        Row::new(vec!["ACTOR", "CLASS", "NAME", "STATE", "DONE", "PENDING"])
            .style(Style::new().add_modifier(Modifier::BOLD)),
    )
    .block(Block::bordered().title(format!("actors of {node}")));
    f.render_widget(table, bottom);
}
