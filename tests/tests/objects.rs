//! Objects: inline and in shared memory, between tasks and processes; dedup; a full store.

use std::time::Duration;

use shoal::{GetError, InitOptions, PutError, StoreError};

const MIB: usize = 1 << 20;

/// Makes a 64 MiB buffer: large, so it goes through the shared-memory store.
#[shoal::remote]
fn make(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Consumes it in another task: length and a checksum.
#[shoal::remote]
fn digest(data: Vec<u8>) -> (usize, String, u32) {
    (data.len(), blake3_hex(&data), std::process::id())
}

fn blake3_hex(b: &[u8]) -> String {
    shoal_protocol::Digest::of(b).to_hex()
}

fn init() -> shoal::Shoal {
    shoal::init_with(InitOptions {
        store_bytes: Some(160 * MIB as u64),
        ..Default::default()
    })
    .unwrap()
}

#[test]
fn a_64_mib_object_passes_between_two_tasks_through_shared_memory() {
    let shoal = init();
    let data = make.remote(64 * MIB, 7);
    let (len, hash, consumer) = digest
        .remote(&data)
        .get_blocking_timeout(Duration::from_secs(120))
        .unwrap();
    assert_eq!(len, 64 * MIB);
    assert_ne!(consumer, std::process::id());
    let expected: Vec<u8> = (0..64 * MIB)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(7))
        .collect();
    assert_eq!(hash, blake3_hex(&expected));
    // The object is a file in the node's store directory, not a socket message.
    let s = shoal.status().unwrap();
    assert!(s.objects.shared_count >= 1);
    assert!(s.objects.shared_bytes >= 64 * MIB as u64);
    let file = std::path::Path::new(&s.store_dir).join(data.id().to_hex());
    assert!(file.metadata().unwrap().len() >= 64 * MIB as u64);
    // The driver reads it too (by mapping it).
    assert_eq!(data.get_blocking().unwrap(), expected);
    // Dropping the last reference frees it.
    drop(data);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while file.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "object file not freed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn equal_content_puts_share_one_object_and_puts_are_each_new() {
    let _s = init();
    let big = vec![42u8; 3 * MIB];
    let a = shoal::put_content(&big).unwrap();
    let b = shoal::put_content(&big).unwrap();
    assert_eq!(a.id(), b.id());
    let small_a = shoal::put_content(&"hello".to_string()).unwrap();
    let small_b = shoal::put_content(&"hello".to_string()).unwrap();
    assert_eq!(small_a.id(), small_b.id());
    assert_ne!(
        small_a.id(),
        shoal::put_content(&"other".to_string()).unwrap().id()
    );
    // A `put` is a new object each time, large or small, and never one made by content.
    let c = shoal::put(&big).unwrap();
    assert_ne!(c.id(), shoal::put(&big).unwrap().id());
    assert_ne!(c.id(), a.id());
    assert_ne!(shoal::put(&"hello".to_string()).unwrap().id(), small_a.id());
    assert_eq!(c.get_blocking().unwrap(), big);
    drop(a);
    // Still readable through the other handle.
    assert_eq!(b.get_blocking().unwrap().len(), 3 * MIB);
    assert_eq!(small_b.get_blocking().unwrap(), "hello");
}

#[test]
fn a_full_store_is_a_clear_error() {
    let _s = init();
    let huge = vec![1u8; 200 * MIB];
    match shoal::put(&huge) {
        Err(PutError::Store(StoreError::Full {
            requested,
            capacity,
            ..
        })) => {
            assert!(requested >= 200 * MIB as u64);
            assert_eq!(capacity, 160 * MIB as u64);
        }
        other => panic!("expected a full store, got {other:?}"),
    }
    // A task whose result cannot be stored fails with a typed error, and the node goes on.
    let r = make.remote(200 * MIB, 1);
    match r.get_blocking_timeout(Duration::from_secs(120)) {
        Err(GetError::Task(shoal::TaskError::ResultStore { message })) => {
            assert!(message.contains("full"), "{message}")
        }
        other => panic!("expected ResultStore, got {:?}", other.map(|v| v.len())),
    }
    assert_eq!(make.remote(10, 0).get_blocking().unwrap().len(), 10);
}

/// Waits for the result of `make`, then returns its length.
#[shoal::remote]
fn length_of(data: Vec<u8>) -> usize {
    data.len()
}

/// Sleeps, then makes `len` bytes (a result still being made when it is freed).
#[shoal::remote]
fn make_later(ms: u64, len: usize) -> Vec<u8> {
    std::thread::sleep(Duration::from_millis(ms));
    vec![1; len]
}

#[test]
fn free_drops_a_value_while_its_refs_live_and_fails_its_reads() {
    let shoal = init();
    // A large put: its store file goes at once, though the ref lives on.
    let big = shoal::put(&vec![3u8; 32 * MIB]).unwrap();
    // Its file in the store directory (other tests share the store).
    let file = std::path::Path::new(&shoal.status().unwrap().store_dir).join(big.id().to_hex());
    assert!(file.exists(), "{}", file.display());
    shoal::free([&big]).unwrap();
    let freed = |r: Result<usize, GetError>| {
        matches!(r, Err(GetError::Task(shoal::TaskError::ObjectFreed { .. })))
    };
    assert!(freed(big.get_blocking().map(|v| v.len())));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while file.exists() {
        assert!(std::time::Instant::now() < deadline, "its file stays");
        std::thread::sleep(Duration::from_millis(10));
    }
    // A task that takes it fails with it.
    assert!(freed(
        length_of
            .remote(&big)
            .get_blocking_timeout(Duration::from_secs(60))
    ));
    // Freed while being made: the task waiting for it fails too, and so does its get.
    let later = make_later.remote(300, 4 * MIB);
    let waiting = length_of.remote(&later);
    shoal::free([&later]).unwrap();
    assert!(freed(waiting.get_blocking_timeout(Duration::from_secs(60))));
    assert!(freed(later.get_blocking().map(|v| v.len())));
    // Other objects are untouched.
    assert_eq!(make.remote(10, 0).get_blocking().unwrap().len(), 10);
}

#[test]
fn a_large_byte_buffer_copied_on_several_threads_reads_back_whole() {
    let _s = init();
    // Above the size put_bytes copies in pieces on several threads.
    let data: Vec<u8> = (0..(40usize << 20) + 17)
        .map(|i| (i * 7 % 253) as u8)
        .collect();
    let r = shoal::put_bytes(&data).unwrap();
    let view = r.get_view_blocking().unwrap();
    assert!(view.is_mapped());
    assert!(view[..] == data[..]);
    r.verify_blocking().unwrap();
}
