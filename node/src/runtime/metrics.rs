//! The node's Prometheus endpoint (`--metrics ADDR`, off unless asked): `GET /metrics` over
//! HTTP/1.1, in the OpenMetrics text format that Prometheus scrapes.
//!
//! A scrape asks the event loop for a [`Scrape`]: the node's status (gauges: workers, store,
//! actors, resources, the mesh) and the core's counters and histograms
//! ([`crate::core::metrics`]). prometheus-client encodes it through a collector, so nothing on
//! the hot path touches a lock or an atomic: the core bumps plain counters, and a scrape
//! copies them.
//!
//! Every name has the `shoal_` prefix and a base unit; counters end in `_total`; no label
//! takes task, object or actor ids, and function and class names are bounded
//! ([`crate::core::metrics::MAX_LABEL_VALUES`]).
//!
//! It is served by the node's small HTTP server ([`super::http`]).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use shoal_protocol::NodeStatus;
use tokio::sync::{mpsc, oneshot};

use super::http::{Handler, Reply};
use super::Event;
use crate::core::metrics::{Histogram, Labelled, MetricsSnapshot};

/// The content type of the OpenMetrics text format.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What one scrape reads: the node's status and the core's counters.
#[derive(Debug)]
pub struct Scrape {
    /// The node's status (gauges).
    pub status: NodeStatus,
    /// The core's counters and tasks by state.
    pub core: MetricsSnapshot,
    /// Object streams served to peers, and their bytes.
    pub served: (u64, u64),
    /// Of those bytes, the ones sent on the sealed lane; and the times a holder's lane could
    /// not be used by this node (the bytes came on the stream).
    pub lane: (u64, u64),
}

impl Scrape {
    /// The scrape in the OpenMetrics text format, every name under `shoal_`.
    pub fn encode(self) -> Result<String, std::fmt::Error> {
        let mut registry = Registry::with_prefix("shoal");
        registry.register_collector(Box::new(self));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry)?;
        Ok(out)
    }
}

/// A metric with no labels.
fn counter(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let m = e.encode_descriptor(name, help, unit, MetricType::Counter)?;
    ConstCounter::new(value).encode(m)
}

fn gauge(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: f64,
) -> Result<(), std::fmt::Error> {
    let m = e.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    encode_gauge(m, value)
}

/// A gauge's value: whole numbers (counts, bytes) without a fraction.
fn encode_gauge(
    m: prometheus_client::encoding::MetricEncoder<'_>,
    value: f64,
) -> Result<(), std::fmt::Error> {
    if value.fract() == 0.0 && value.abs() < 9.0e15 {
        ConstGauge::new(value as i64).encode(m)
    } else {
        ConstGauge::new(value).encode(m)
    }
}

/// A labelled family: one sample per label set.
fn family<L, const N: usize>(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    kind: MetricType,
    samples: impl IntoIterator<Item = ([(&'static str, L); N], f64)>,
) -> Result<(), std::fmt::Error>
where
    L: prometheus_client::encoding::EncodeLabelValue,
{
    let mut m = e.encode_descriptor(name, help, unit, kind)?;
    for (labels, value) in samples {
        let sample = m.encode_family(&labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(value as u64).encode(sample)?,
            _ => encode_gauge(sample, value)?,
        }
    }
    Ok(())
}

fn histogram(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    h: &Histogram,
) -> Result<(), std::fmt::Error> {
    let mut m = e.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
    m.encode_histogram::<NoLabelSet>(h.sum, h.count, &h.buckets(), None)
}

impl Collector for Scrape {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let s = &self.status;
        let c = &self.core.counters;
        let e = &mut e;
        family(
            e,
            "build_info",
            "The node's version and platform (always 1).",
            None,
            MetricType::Gauge,
            [(
                [
                    ("version", env!("CARGO_PKG_VERSION").to_string()),
                    ("target", env!("SHOAL_TARGET").to_string()),
                ],
                1.0,
            )],
        )?;
        gauge(
            e,
            "uptime",
            "Time since the node started.",
            Some(&Unit::Seconds),
            s.uptime_ms as f64 / 1000.0,
        )?;
        // Tasks.
        family(
            e,
            "tasks",
            "Tasks this node knows, by state (waiting_args, queued, running, at_peer) and \
             function.",
            None,
            MetricType::Gauge,
            self.core.tasks.iter().map(|(state, f, n)| {
                (
                    [("state", state.to_string()), ("function", f.clone())],
                    *n as f64,
                )
            }),
        )?;
        family(
            e,
            "tasks_finished",
            "Tasks (actor calls too) whose worker here reported their end, by function and \
             outcome.",
            None,
            MetricType::Counter,
            c.tasks_ended.iter().flat_map(|(f, n)| {
                [
                    (
                        [("function", f.to_string()), ("outcome", "ok".to_string())],
                        n.ok as f64,
                    ),
                    (
                        [
                            ("function", f.to_string()),
                            ("outcome", "failed".to_string()),
                        ],
                        n.failed as f64,
                    ),
                ]
            }),
        )?;
        counter(
            e,
            "tasks_submitted",
            "Tasks submitted by local processes (actor calls too).",
            None,
            c.tasks_submitted,
        )?;
        counter(
            e,
            "tasks_received",
            "Tasks received from peers to run here.",
            None,
            c.tasks_received,
        )?;
        counter(
            e,
            "tasks_spilled",
            "Tasks sent to peers to run there (each sending).",
            None,
            c.tasks_spilled,
        )?;
        counter(
            e,
            "tasks_retried",
            "Tasks run again after their worker or peer died or their result was lost.",
            None,
            c.tasks_retried,
        )?;
        counter(
            e,
            "tasks_cancelled",
            "Cancels of tasks this node took from their submitters (shoal::cancel).",
            None,
            c.tasks_cancelled,
        )?;
        histogram(
            e,
            "task_dispatch",
            "From a task's arrival at this node to its hand-over to a worker.",
            &c.dispatch_seconds,
        )?;
        // Actors.
        // Classes come from programs: bounded as the core bounds function names.
        let mut actors: std::collections::BTreeMap<&str, Labelled<u64>> = Default::default();
        for a in &s.actors {
            *actors.entry(&a.state).or_default().entry(&a.class) += 1;
        }
        family(
            e,
            "actors",
            "Actors on this node, by state and class.",
            None,
            MetricType::Gauge,
            actors.iter().flat_map(|(state, by)| {
                by.iter().map(|(class, n)| {
                    (
                        [("state", state.to_string()), ("class", class.to_string())],
                        *n as f64,
                    )
                })
            }),
        )?;
        histogram(
            e,
            "actor_call",
            "From an actor call's arrival at the actor's node to its end.",
            &c.actor_call_seconds,
        )?;
        // Objects and the store.
        let o = &s.objects;
        family(
            e,
            "object_store",
            "Bytes of objects held here, by location: inline (in the node's memory), memory \
             (the shared-memory store, copies pulled from peers aside), pulled (copies pulled \
             from peers, in the shared-memory store), spilled (on disk).",
            Some(&Unit::Bytes),
            MetricType::Gauge,
            [
                ([("location", "inline")], o.inline_bytes as f64),
                (
                    [("location", "memory")],
                    o.store_used.saturating_sub(o.pulled_bytes) as f64,
                ),
                ([("location", "pulled")], o.pulled_bytes as f64),
                ([("location", "spilled")], o.spilled_bytes as f64),
            ],
        )?;
        gauge(
            e,
            "object_store_capacity",
            "The shared-memory store's capacity.",
            Some(&Unit::Bytes),
            o.store_capacity as f64,
        )?;
        gauge(
            e,
            "objects",
            "Objects this node knows (ready, pending or failed).",
            None,
            o.count as f64,
        )?;
        counter(
            e,
            "object_spills",
            "Objects spilled to disk.",
            None,
            c.spills,
        )?;
        counter(
            e,
            "object_spilled",
            "Bytes spilled to disk.",
            Some(&Unit::Bytes),
            c.spilled_bytes,
        )?;
        counter(
            e,
            "object_restores",
            "Objects restored from disk.",
            None,
            c.restores,
        )?;
        counter(
            e,
            "object_restored",
            "Bytes restored from disk.",
            Some(&Unit::Bytes),
            c.restored_bytes,
        )?;
        counter(
            e,
            "objects_reconstructed",
            "Objects made again from their lineage.",
            None,
            c.reconstructions,
        )?;
        family(
            e,
            "object_transfers",
            "Object transfers between peers: in (objects pulled here), out (streams served \
             to peers, each a whole object or, for a pull from several holders, a part).",
            None,
            MetricType::Counter,
            [
                ([("direction", "in")], c.pulls as f64),
                ([("direction", "out")], self.served.0 as f64),
            ],
        )?;
        family(
            e,
            "object_transferred",
            "Bytes of objects moved between peers: in (pulled here), out (served to peers).",
            Some(&Unit::Bytes),
            MetricType::Counter,
            [
                ([("direction", "in")], c.pulled_bytes as f64),
                ([("direction", "out")], self.served.1 as f64),
            ],
        )?;
        counter(
            e,
            "object_lane_sent",
            "Bytes of objects served to peers on this node's sealed lane (AES-256-GCM over a \
             TCP connection of their own); the rest of object_transferred{direction=\"out\"} \
             went on libp2p streams.",
            Some(&Unit::Bytes),
            self.lane.0,
        )?;
        counter(
            e,
            "object_lane_fallbacks",
            "Times a holder's sealed lane could not be reached from this node, or brought \
             nothing, and the bytes came on the libp2p stream (a firewall closing the lane's \
             port, say).",
            None,
            self.lane.1,
        )?;
        // Workers, processes and resources.
        let mut workers: std::collections::BTreeMap<String, u64> = Default::default();
        for w in &s.workers {
            *workers.entry(w.state.clone()).or_default() += 1;
        }
        family(
            e,
            "workers",
            "Worker processes, by state (starting, idle, busy, blocked, actor).",
            None,
            MetricType::Gauge,
            workers
                .into_iter()
                .map(|(state, n)| ([("state", state)], n as f64)),
        )?;
        counter(
            e,
            "workers_started",
            "Worker processes started.",
            None,
            c.workers_started,
        )?;
        counter(
            e,
            "worker_failures",
            "Workers that died with tasks in flight, unasked.",
            None,
            c.workers_died,
        )?;
        gauge(
            e,
            "clients",
            "Processes attached to the node (drivers, workers, CLI).",
            None,
            s.clients as f64,
        )?;
        family(
            e,
            "resources",
            "Resources of this node, in all.",
            None,
            MetricType::Gauge,
            s.resources_total
                .0
                .iter()
                .map(|(name, milli)| ([("resource", name.clone())], *milli as f64 / 1000.0)),
        )?;
        family(
            e,
            "resources_free",
            "Resources of this node not held by running tasks and actors.",
            None,
            MetricType::Gauge,
            s.resources_free
                .0
                .iter()
                .map(|(name, milli)| ([("resource", name.clone())], *milli as f64 / 1000.0)),
        )?;
        // The mesh.
        counter(
            e,
            "peers_lost",
            "Peers written off (their work retried elsewhere).",
            None,
            c.peers_lost,
        )?;
        if let Some(mesh) = &s.mesh {
            let connected = mesh.peers.iter().filter(|p| p.connected).count();
            family(
                e,
                "peers",
                "Other peers in this node's view: connected, or known without a connection.",
                None,
                MetricType::Gauge,
                [
                    ([("state", "connected")], connected as f64),
                    (
                        [("state", "unconnected")],
                        (mesh.peers.len() - connected) as f64,
                    ),
                ],
            )?;
            family(
                e,
                "gossip",
                "Bytes of load reports published (out) and delivered here (in).",
                Some(&Unit::Bytes),
                MetricType::Counter,
                [
                    ([("direction", "in")], mesh.gossip_bytes_in as f64),
                    ([("direction", "out")], mesh.gossip_bytes_out as f64),
                ],
            )?;
            if let Some(m) = &mesh.membership {
                family(
                    e,
                    "membership_members",
                    "Members of the mesh as SWIM sees them: up (this node included), suspected.",
                    None,
                    MetricType::Gauge,
                    [
                        ([("state", "up")], m.members_up as f64),
                        ([("state", "suspected")], m.suspected as f64),
                    ],
                )?;
                family(
                    e,
                    "membership_local_health",
                    "Lifeguard's local health multiplier (0 is healthy).",
                    None,
                    MetricType::Gauge,
                    [([("node", "self")], f64::from(m.local_health))],
                )?;
                family(
                    e,
                    "membership",
                    "Bytes of membership messages sent (out) and received (in).",
                    Some(&Unit::Bytes),
                    MetricType::Counter,
                    [
                        ([("direction", "in")], m.bytes_in as f64),
                        ([("direction", "out")], m.bytes_out as f64),
                    ],
                )?;
                family(
                    e,
                    "membership_messages_lost",
                    "Membership messages lost on the way (SWIM survives their loss).",
                    None,
                    MetricType::Counter,
                    [([("node", "self")], m.lost as f64)],
                )?;
            }
        }
        family(
            e,
            "refused_requests",
            "Requests from peers refused since start (they may not make them), by kind.",
            None,
            MetricType::Counter,
            s.refused
                .iter()
                .map(|(kind, n)| ([("kind", kind.clone())], *n as f64)),
        )?;
        Ok(())
    }
}

/// Answers `GET /metrics` with a scrape from the event loop behind `events`.
#[derive(Debug)]
pub struct Endpoint {
    events: mpsc::Sender<Event>,
}

impl Endpoint {
    /// The endpoint of the event loop behind `events`.
    pub fn new(events: mpsc::Sender<Event>) -> Self {
        Self { events }
    }
}

impl Handler for Endpoint {
    async fn get(&self, path: &str, _query: &str) -> Reply {
        if path != "/metrics" {
            return Reply::text(404, "Not Found", "metrics are at /metrics\n");
        }
        let (tx, rx) = oneshot::channel();
        let scrape = match self.events.send(Event::Metrics(tx)).await {
            Ok(()) => rx.await.ok(),
            Err(_) => None,
        };
        match scrape.map(|s| s.encode()) {
            Some(Ok(body)) => Reply::ok(CONTENT_TYPE, body),
            Some(Err(_)) => {
                tracing::warn!("encoding the metrics failed");
                Reply::text(500, "Internal Server Error", "encoding failed\n")
            }
            None => Reply::text(503, "Service Unavailable", "the node is stopping\n"),
        }
    }
}

#[cfg(test)]
mod tests {
    use shoal_protocol::{ActorId, ActorStatus, NodeId, ObjectStats, ResourceSet, WorkerStatus};

    use super::*;
    use crate::core::metrics::CoreMetrics;

    fn status() -> NodeStatus {
        NodeStatus {
            node_id: NodeId([1; 16]),
            pid: 1,
            socket: "/s".into(),
            store_dir: "/d".into(),
            embedded: false,
            uptime_ms: 1500,
            resources_total: ResourceSet::cpus(2.0).with("gpu", 1.0),
            resources_free: ResourceSet::cpus(0.5),
            workers: ["busy", "busy", "idle"]
                .into_iter()
                .enumerate()
                .map(|(i, s)| WorkerStatus {
                    id: i as u64,
                    pid: 0,
                    binary: shoal_protocol::BinaryId([0; 32]),
                    state: s.into(),
                    tasks_done: 0,
                })
                .collect(),
            tasks_queued: 0,
            tasks_running: 0,
            tasks_finished: 0,
            clients: 3,
            objects: ObjectStats {
                store_used: 4096 + 1000,
                pulled_bytes: 1000,
                store_capacity: 1 << 20,
                spilled_bytes: 100,
                ..Default::default()
            },
            actors: vec![ActorStatus {
                actor_id: ActorId([2; 16]),
                class: "m::Counter".into(),
                name: None,
                state: "alive".into(),
                incarnation: 0,
                pid: 0,
                calls_pending: 0,
                calls_done: 0,
            }],
            mesh: None,
            refused: vec![("release".into(), 2)],
            metrics: None,
            dashboard: None,
        }
    }

    #[test]
    fn a_scrape_is_openmetrics_text_with_the_prefix_units_and_totals() {
        let mut counters = CoreMetrics {
            tasks_submitted: 7,
            pulled_bytes: 1 << 20,
            ..Default::default()
        };
        counters.tasks_ended.entry("m::f").ok = 5;
        counters.tasks_ended.entry("m::f").failed = 1;
        counters.dispatch_seconds.observe(0.0002);
        counters.dispatch_seconds.observe(30.0);
        let scrape = Scrape {
            status: status(),
            core: MetricsSnapshot {
                counters,
                tasks: vec![("queued", "m::f".into(), 2)],
            },
            served: (1, 512),
            lane: (256, 1),
        };
        let text = scrape.encode().unwrap();
        for line in [
            "# TYPE shoal_tasks_submitted counter",
            "shoal_tasks_submitted_total 7",
            "shoal_tasks_finished_total{function=\"m::f\",outcome=\"ok\"} 5",
            "shoal_tasks_finished_total{function=\"m::f\",outcome=\"failed\"} 1",
            "shoal_tasks{state=\"queued\",function=\"m::f\"} 2",
            "# TYPE shoal_task_dispatch_seconds histogram",
            "shoal_task_dispatch_seconds_count 2",
            "shoal_task_dispatch_seconds_bucket{le=\"0.00025\"} 1",
            "shoal_task_dispatch_seconds_bucket{le=\"10.0\"} 1",
            "shoal_task_dispatch_seconds_bucket{le=\"+Inf\"} 2",
            "shoal_object_transferred_bytes_total{direction=\"in\"} 1048576",
            "shoal_object_transferred_bytes_total{direction=\"out\"} 512",
            "shoal_object_lane_sent_bytes_total 256",
            "shoal_object_lane_fallbacks_total 1",
            "shoal_object_store_bytes{location=\"memory\"} 4096",
            "shoal_object_store_bytes{location=\"pulled\"} 1000",
            "shoal_workers{state=\"busy\"} 2",
            "shoal_actors{state=\"alive\",class=\"m::Counter\"} 1",
            "shoal_resources{resource=\"gpu\"} 1",
            "shoal_resources_free{resource=\"CPU\"} 0.5",
            "shoal_refused_requests_total{kind=\"release\"} 2",
            "shoal_uptime_seconds 1.5",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "no line {line:?} in:\n{text}"
            );
        }
        assert!(text.contains("shoal_build_info{version="), "{text}");
        assert!(text.ends_with("# EOF\n"));
        // Without a mesh, no peer metrics.
        assert!(!text.contains("shoal_peers{"));
    }
}
