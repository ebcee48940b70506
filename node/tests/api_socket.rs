//! The node's local socket under hostile or broken clients, with a real `shoal node` process:
//! every bad connection is told why (`Rejected`), logged and closed, and nobody else notices.

use std::time::Duration;

use shoal_protocol::{BinaryId, BinaryInfo, Hello, ObjectId, Role, ToClient, ToNode};
use shoal_tests::{
    cli_hello, expect_rejected_and_closed, frame_of, NodeOptions, NodeProcess, RawClient,
};

/// A node of this package's `shoal`, logging at `info` (the tests wait for its log lines).
fn start_node() -> NodeProcess {
    let options = NodeOptions::new()
        .bin(env!("CARGO_BIN_EXE_shoal"))
        .cpus(2.0)
        .env("RUST_LOG", "info");
    NodeProcess::start(options).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Deterministic pseudo-random bytes (xorshift64*), so a failure can be replayed.
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        out.extend_from_slice(&seed.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A length prefix announcing `len` payload bytes.
fn header(len: u32) -> [u8; 4] {
    len.to_le_bytes()
}

/// `survivor` (connected and welcomed before the trouble) and a brand-new client both still
/// get their status.
fn others_unaffected(node: &NodeProcess, survivor: &mut RawClient) {
    let before = survivor.status(41);
    assert_eq!(before.pid, node.pid());
    let fresh = node.raw_status();
    assert_eq!(fresh.node_id, before.node_id);
}

#[test]
fn garbage_bytes_are_rejected() {
    let node = start_node();
    let mut survivor = node.client();

    // 1. Text that is not a frame at all: its first four bytes, "GET ", read as a length of
    //    542 MB, which is over the maximum.
    let mut http = Vec::new();
    while http.len() < 4096 {
        http.extend_from_slice(b"GET /index.html HTTP/1.1\r\nHost: localhost\r\n\r\n");
    }
    http.truncate(4096);
    let mut c = RawClient::connect(&node.socket());
    c.send_garbage(&http);
    let reason = expect_rejected_and_closed(&mut c, false);
    assert!(
        reason.contains("exceeds the maximum of 16777216 bytes"),
        "{reason}"
    );
    node.expect_log(&["connection rejected", "exceeds the maximum"]);

    // 2. A small, honest length prefix whose payload is not a message.
    let mut bad = header(64).to_vec();
    bad.extend_from_slice(&[0xff; 64]);
    bad.extend_from_slice(&noise(4096 - bad.len(), 7));
    let mut c = RawClient::connect(&node.socket());
    c.send_garbage(&bad);
    let reason = expect_rejected_and_closed(&mut c, false);
    assert!(reason.contains("malformed input"), "{reason}");
    node.expect_log(&["connection rejected", "malformed input"]);

    // 3. 4 KiB of noise framed as one 4092-byte frame.
    let mut framed_noise = noise(4096, 0x5eed);
    framed_noise[..4].copy_from_slice(&header(4092));
    let mut c = RawClient::connect(&node.socket());
    c.send_garbage(&framed_noise);
    let reason = expect_rejected_and_closed(&mut c, false);
    assert!(!reason.is_empty());

    // 4. Garbage after a good handshake: Welcome, then Rejected, then the end.
    let mut c = RawClient::connect(&node.socket());
    c.hello();
    c.send_garbage(&bad);
    let reason = expect_rejected_and_closed(&mut c, false);
    assert!(reason.contains("malformed input"), "{reason}");

    others_unaffected(&node, &mut survivor);
}

#[test]
fn truncated_frame_is_rejected() {
    let node = start_node();
    let mut survivor = node.client();

    // After the handshake: a header announcing 100 bytes, then only 10, then end of stream.
    let mut c = RawClient::connect(&node.socket());
    c.hello();
    c.send_raw(&header(100));
    c.send_raw(&[0xab; 10]);
    c.shutdown_write();
    let reason = expect_rejected_and_closed(&mut c, false);
    assert!(
        reason.contains("stream ended inside a frame (14 of 104 bytes)"),
        "{reason}"
    );
    let line = node.expect_log(&[
        "connection rejected",
        "stream ended inside a frame (14 of 104 bytes)",
    ]);
    assert!(line.contains("WARN"), "not a warning: {line}");

    // During the handshake: half a Hello frame, then end of stream.
    let hello = frame_of(&ToNode::Hello(cli_hello()));
    let mut c = RawClient::connect(&node.socket());
    c.send_raw(&hello[..7]);
    c.shutdown_write();
    let reason = expect_rejected_and_closed(&mut c, false);
    let expected = format!("stream ended inside a frame (7 of {} bytes)", hello.len());
    assert!(reason.contains(&expected), "{reason}");
    node.expect_log(&["connection rejected", &expected]);

    // Even the length prefix cut short.
    let mut c = RawClient::connect(&node.socket());
    c.send_raw(&[1, 0]);
    c.shutdown_write();
    let reason = expect_rejected_and_closed(&mut c, false);
    assert!(
        reason.contains("stream ended inside a frame (2 of 4 bytes)"),
        "{reason}"
    );

    others_unaffected(&node, &mut survivor);
}

#[test]
fn oversized_frame_is_rejected() {
    let node = start_node();
    let mut survivor = node.client();

    // Only the header is sent and the stream stays open: a node that waited for the 64 MiB
    // payload would never answer (`recv` panics after its deadline).
    let mut c = RawClient::connect(&node.socket());
    c.send_raw(&header(64 << 20));
    let reason = expect_rejected_and_closed(&mut c, false);
    assert!(
        reason.contains("frame of 67108864 bytes exceeds the maximum of 16777216 bytes"),
        "{reason}"
    );
    let line = node.expect_log(&[
        "connection rejected",
        "frame of 67108864 bytes exceeds the maximum",
    ]);
    assert!(line.contains("WARN"), "not a warning: {line}");

    // The same after a good handshake, with a few payload bytes following the header.
    let mut c = RawClient::connect(&node.socket());
    c.hello();
    let mut big = header(64 << 20).to_vec();
    big.extend_from_slice(&[0; 100]);
    c.send_raw(&big);
    let reason = expect_rejected_and_closed(&mut c, false);
    assert!(reason.contains("exceeds the maximum"), "{reason}");

    // One byte over the maximum is already too much.
    let mut c = RawClient::connect(&node.socket());
    c.send_raw(&header((16 << 20) + 1));
    let reason = expect_rejected_and_closed(&mut c, false);
    assert!(reason.contains("exceeds the maximum"), "{reason}");

    others_unaffected(&node, &mut survivor);
}

#[test]
fn handshake_checks() {
    let node = start_node();
    let mut survivor = node.client();

    let refused = |msg: ToNode| -> String {
        let mut c = RawClient::connect(&node.socket());
        c.send(&msg);
        expect_rejected_and_closed(&mut c, false)
    };

    let reason = refused(ToNode::Hello(Hello {
        magic: *b"HTTP",
        ..cli_hello()
    }));
    assert!(reason.contains("bad magic"), "{reason}");

    let reason = refused(ToNode::Hello(Hello {
        version: shoal_protocol::PROTOCOL_VERSION + 1,
        ..cli_hello()
    }));
    assert!(reason.contains("protocol version"), "{reason}");

    let reason = refused(ToNode::Status { request: 1 });
    assert!(reason.contains("first message is not Hello"), "{reason}");

    let reason = refused(ToNode::Hello(Hello {
        role: Role::Driver,
        binary: None,
        ..cli_hello()
    }));
    assert!(reason.contains("must name its binary"), "{reason}");

    // A worker id the node never gave out: the core refuses it. (That the connection is then
    // also closed is checked by `rejected_worker_connection_is_closed`.)
    let mut c = RawClient::connect(&node.socket());
    c.send(&ToNode::Hello(Hello {
        role: Role::Worker { worker_id: 999 },
        binary: Some(BinaryInfo {
            id: BinaryId([1; 32]),
            path: "/nonexistent".into(),
            manifest: None,
        }),
        ..cli_hello()
    }));
    match c.recv() {
        Ok(Some(ToClient::Rejected { reason })) => {
            assert!(reason.contains("unknown worker id 999"), "{reason}")
        }
        other => panic!("expected Rejected, got {other:?}"),
    }

    others_unaffected(&node, &mut survivor);
}

#[test]
fn rejected_worker_connection_is_closed() {
    let node = start_node();

    let mut c = RawClient::connect(&node.socket());
    c.send(&ToNode::Hello(Hello {
        role: Role::Worker { worker_id: 999 },
        ..cli_hello()
    }));
    // What a rejected peer sends next must have no effect: the node closes the connection
    // and never registers this object.
    // The node may already have closed, so the write may fail with a broken pipe.
    let bytes = b"rejected".to_vec();
    c.send_garbage(&frame_of(&ToNode::Put {
        id: ObjectId::for_content(&bytes),
        value: bytes,
        nested: vec![],
    }));
    c.set_timeout(Duration::from_secs(3));
    let reason = expect_rejected_and_closed(&mut c, false);
    assert!(reason.contains("unknown worker id 999"), "{reason}");
    assert_eq!(
        node.raw_status().objects.count,
        0,
        "a rejected peer stored an object"
    );
}
