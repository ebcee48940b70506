//! The object store under pressure and over lifetimes: a small embedded store (48 MiB) with a
//! spill directory of its own; objects of 8 MiB.
//!
//! The tests share one node, so they take turns (`serial`): each one counts objects and
//! files, and another test's objects would be counted too.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize, Serializer};
use shoal::{GetError, InitOptions, ObjectRef, PutError, Shoal, StoreError, TaskError};
use shoal_tests::KillOnDrop;

const STORE: u64 = 48 << 20;
const MB8: usize = 8 << 20;

/// Bytes that encode as one block (as `serde_bytes`), so 8 MiB encode at memory speed.
#[derive(Clone, PartialEq, Debug)]
pub struct Blob(Vec<u8>);

impl Serialize for Blob {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Vec::<u8>::deserialize(d).map(Blob)
    }
}

/// A distinct 8 MiB pattern per `seed`.
fn blob(seed: u64) -> Blob {
    let mut v = vec![0u8; MB8];
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for chunk in v.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    Blob(v)
}

fn spill_parent() -> PathBuf {
    std::env::temp_dir().join(format!("shoal-store-test-spill-{}", std::process::id()))
}

fn node() -> Shoal {
    shoal::init_with(InitOptions {
        store_bytes: Some(STORE),
        spill_dir: Some(spill_parent()),
        force_embedded: true,
        ..Default::default()
    })
    .unwrap()
}

fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Files in the node's store directory and in its spill directory.
fn files(shoal: &Shoal) -> (usize, usize) {
    let status = shoal.status().unwrap();
    // Hidden entries (the pool of reusable files) are not objects.
    let count = |dir: &Path| {
        std::fs::read_dir(dir).map_or(0, |d| {
            d.flatten()
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .count()
        })
    };
    let store = PathBuf::from(&status.store_dir);
    let spill = spill_parent().join(store.file_name().unwrap());
    (count(&store), count(&spill))
}

fn spill_file(shoal: &Shoal, id: shoal::ObjectId) -> PathBuf {
    let store = PathBuf::from(shoal.status().unwrap().store_dir);
    spill_parent()
        .join(store.file_name().unwrap())
        .join(id.to_hex())
}

fn location(shoal: &Shoal, id: shoal::ObjectId) -> Option<String> {
    shoal
        .objects()
        .unwrap()
        .into_iter()
        .find(|o| o.id == id)
        .map(|o| o.location)
}

#[test]
fn ten_times_the_capacity_spills_and_reads_back() {
    let _turn = serial();
    let shoal = node();
    let refs: Vec<ObjectRef<Blob>> = (0..60).map(|i| shoal::put(&blob(i)).unwrap()).collect();
    let status = shoal.status().unwrap();
    assert!(status.objects.store_used <= STORE, "{status:?}");
    assert!(status.objects.spilled_count >= 50, "{:?}", status.objects);
    // Every value comes back right, most of them from disk.
    for (i, r) in refs.iter().enumerate() {
        assert!(r.get_blocking().unwrap() == blob(i as u64), "object {i}");
    }
    // A task reads a spilled object too.
    assert_eq!(len_of.remote(&refs[0]).get_blocking().unwrap(), MB8);
    drop(refs);
    let status = shoal.status().unwrap();
    let spill = spill_parent().join(PathBuf::from(&status.store_dir).file_name().unwrap());
    let left: Vec<_> = std::fs::read_dir(&spill)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        files(&shoal),
        (0, 0),
        "every file is freed with its last ref: {left:?} {:?}",
        shoal.objects()
    );
    assert_eq!(shoal.status().unwrap().objects.spilled_bytes, 0);
}

#[shoal::remote]
fn len_of(b: Blob) -> usize {
    b.0.len()
}

#[test]
fn restored_copies_are_dropped_least_recently_used_first() {
    let _turn = serial();
    let shoal = node();
    // Five objects (of 8 MiB and a few bytes) fill the store; seven more push the first seven
    // to disk. Then the last five are dropped: memory is empty.
    let mut refs: Vec<ObjectRef<Blob>> =
        (100..112).map(|i| shoal::put(&blob(i)).unwrap()).collect();
    for r in &refs[..7] {
        assert_eq!(location(&shoal, r.id()).as_deref(), Some("disk"));
    }
    refs.truncate(7);
    assert_eq!(shoal.status().unwrap().objects.store_used, 0);
    // Read five back, in the order 2, 0, 1, 5, 6: memory is full of copies that are on disk
    // too.
    for i in [2, 0, 1, 5, 6] {
        assert!(refs[i].get_blocking().unwrap() == blob(100 + i as u64));
        assert_eq!(
            location(&shoal, refs[i].id()).as_deref(),
            Some("memory+disk")
        );
    }
    // Reading two more back: the restored copies are dropped least recently read first (2,
    // then 0), without writing anything to disk (they are there already).
    let spilled_before = shoal.status().unwrap().objects.spilled_count;
    refs[3].get_blocking().unwrap();
    refs[4].get_blocking().unwrap();
    assert_eq!(location(&shoal, refs[2].id()).as_deref(), Some("disk"));
    assert_eq!(location(&shoal, refs[0].id()).as_deref(), Some("disk"));
    for i in [1, 5, 6, 3, 4] {
        assert_eq!(
            location(&shoal, refs[i].id()).as_deref(),
            Some("memory+disk")
        );
    }
    assert_eq!(
        shoal.status().unwrap().objects.spilled_count,
        spilled_before,
        "nothing new was spilled"
    );
}

/// A distinct pattern of `len` bytes per `seed` (the 8 MiB `blob` repeated).
fn blob_of(seed: u64, len: usize) -> Blob {
    let unit = blob(seed).0;
    Blob(unit.iter().copied().cycle().take(len).collect())
}

/// A result of 30 MiB: two do not fit in the store at once.
const BIG: usize = 30 << 20;

#[shoal::remote]
fn big_result(seed: u64) -> Blob {
    blob_of(seed, BIG)
}

#[test]
fn results_that_do_not_fit_together_wait_for_room_and_all_succeed() {
    // Ray's case: tasks making large results at once in a store that holds one at a time.
    // A result's room is asked while another is being written; it waits until that one is
    // sealed and can be spilled, rather than failing with a full store.
    let _turn = serial();
    let shoal = node();
    let refs: Vec<ObjectRef<Blob>> = (0..4).map(|i| big_result.remote(100 + i)).collect();
    for (i, r) in refs.iter().enumerate() {
        let got = r
            .get_blocking()
            .unwrap_or_else(|e| panic!("result {i}: {e}"));
        assert!(got == blob_of(100 + i as u64, BIG), "result {i}");
    }
    let status = shoal.status().unwrap();
    assert!(status.objects.store_used <= STORE, "{status:?}");
    drop(refs);
    assert_eq!(files(&shoal), (0, 0));
}

#[test]
fn a_zero_timeout_get_of_a_spilled_object_reads_it_back() {
    let _turn = serial();
    let shoal = node();
    let first = shoal::put(&blob(200)).unwrap();
    // Seven more of 8 MiB in a 48 MiB store: the first, least recently used, goes to disk.
    let rest: Vec<ObjectRef<Blob>> = (201..208).map(|i| shoal::put(&blob(i)).unwrap()).collect();
    assert_eq!(location(&shoal, first.id()).as_deref(), Some("disk"));
    // It is here (on disk): a get that will not wait still reads it back, as Ray's does.
    let got = first.get_blocking_timeout(Duration::ZERO).unwrap();
    assert!(got == blob(200));
    drop((first, rest));
    assert_eq!(files(&shoal), (0, 0));
}

#[test]
fn a_put_that_cannot_fit_names_the_sizes() {
    let _turn = serial();
    let shoal = node();
    let huge = Blob(vec![7; (STORE + 1) as usize]);
    match shoal::put(&huge) {
        Err(PutError::Store(StoreError::Full {
            requested,
            capacity,
            ..
        })) => {
            assert!(requested > STORE, "{requested}");
            assert_eq!(capacity, STORE);
        }
        other => panic!("expected a full store, got {other:?}"),
    }
    assert_eq!(files(&shoal), (0, 0));
}

#[test]
fn a_corrupted_spilled_copy_is_reported_not_returned() {
    let _turn = serial();
    let shoal = node();
    let victim = shoal::put(&blob(200)).unwrap();
    let others: Vec<ObjectRef<Blob>> = (201..208).map(|i| shoal::put(&blob(i)).unwrap()).collect();
    assert_eq!(location(&shoal, victim.id()).as_deref(), Some("disk"));
    let path = spill_file(&shoal, victim.id());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[MB8 / 2] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    match victim.get_blocking() {
        Err(GetError::Task(TaskError::ObjectCorrupted { id, message })) => {
            assert_eq!(id, victim.id());
            assert!(message.contains("digest"), "{message}");
        }
        other => panic!(
            "expected a corruption error, got {:?}",
            other.map(|b| b.0.len())
        ),
    }
    // The others are fine.
    assert!(others[0].get_blocking().unwrap() == blob(201));
    // A reader can check a copy in memory against its digest too.
    let last = others.last().unwrap();
    last.verify_blocking().unwrap();
    let store = PathBuf::from(shoal.status().unwrap().store_dir);
    let path = store.join(last.id().to_hex());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[7] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    assert!(matches!(
        last.verify_blocking(),
        Err(GetError::Task(TaskError::ObjectCorrupted { .. }))
    ));
}

#[test]
fn equal_content_puts_share_one_copy() {
    let _turn = serial();
    let shoal = node();
    let a = shoal::put_content(&blob(300)).unwrap();
    let b = shoal::put_content(&blob(300)).unwrap();
    assert_eq!(a.id(), b.id());
    // Another process puts the same bytes: still one object, one file.
    assert_eq!(put_in_task.remote(300).get_blocking().unwrap(), a.id());
    assert_eq!(files(&shoal), (1, 0));
    drop((a, b));
    assert_eq!(files(&shoal), (0, 0));
}

#[shoal::remote]
fn put_in_task(seed: u64) -> shoal::ObjectId {
    shoal::put_content(&blob(seed)).unwrap().id()
}

#[test]
fn objects_are_freed_with_their_last_ref_even_nested_or_held_elsewhere() {
    let _turn = serial();
    let shoal = node();
    let count = |shoal: &Shoal| shoal.status().unwrap().objects.shared_count;
    assert_eq!(count(&shoal), 0);

    // A ref inside another object keeps it alive; dropping the outer frees both.
    let inner = shoal::put(&blob(400)).unwrap();
    let inner_id = inner.id();
    let outer = shoal::put(&vec![inner.clone()]).unwrap();
    drop(inner);
    assert_eq!(count(&shoal), 1, "the inner object lives inside the outer");
    let back: Vec<ObjectRef<Blob>> = outer.get_blocking().unwrap();
    assert_eq!(back[0].id(), inner_id);
    assert!(back[0].get_blocking().unwrap() == blob(400));
    drop(outer);
    assert_eq!(count(&shoal), 1, "this process holds the ref it read");
    drop(back);
    assert_eq!(count(&shoal), 0);
    assert_eq!(files(&shoal), (0, 0));

    // An actor in another process keeps refs it was given after we drop ours.
    let keeper = Keeper::remote();
    let x = shoal::put(&blob(401)).unwrap();
    keeper.keep(vec![x.clone()]).get_blocking().unwrap();
    drop(x);
    assert_eq!(count(&shoal), 1);
    assert_eq!(keeper.total().get_blocking().unwrap(), MB8);
    keeper.clear().get_blocking().unwrap();
    assert_eq!(count(&shoal), 0, "freed when the other process dropped it");

    // A ref inside a task's result: alive until the result is dropped.
    let made = make_nested.remote(402);
    let list = made.get_blocking().unwrap();
    assert_eq!(count(&shoal), 1);
    drop(made);
    assert!(list[0].get_blocking().unwrap() == blob(402));
    drop(list);
    assert_eq!(count(&shoal), 0);
    assert_eq!(files(&shoal), (0, 0));
}

/// Puts a value and returns it inside a list; the task's own handle is dropped at once.
#[shoal::remote]
fn make_nested(seed: u64) -> Vec<ObjectRef<Blob>> {
    vec![shoal::put(&blob(seed)).unwrap()]
}

#[derive(Default)]
pub struct Keeper {
    refs: Vec<ObjectRef<Blob>>,
}

#[shoal::actor]
impl Keeper {
    pub fn new() -> Self {
        Keeper::default()
    }

    pub fn keep(&mut self, refs: Vec<ObjectRef<Blob>>) {
        self.refs.extend(refs);
    }

    pub fn total(&self) -> usize {
        self.refs
            .iter()
            .map(|r| r.get_blocking().unwrap().0.len())
            .sum()
    }

    pub fn clear(&mut self) {
        self.refs.clear();
    }
}

#[test]
fn a_driver_killed_with_sigkill_leaves_no_objects_or_files() {
    let _turn = serial();
    let shoal = node();
    assert_eq!(files(&shoal), (0, 0));
    // It says when its objects are in: more than the store holds, so some are on disk.
    let mut child = child_program(&shoal, "doomed_driver_entry", "SHOAL_TEST_DOOMED", "ready");
    // "ready" comes once the driver's puts returned; its last messages (a seal, the small
    // puts) may still be on their way to the node.
    let (count, _) = shoal_tests::wait_for(Duration::from_secs(10), "the driver's objects", || {
        let count = shoal.status()?.objects.count;
        Ok((count >= 8).then_some(count))
    })
    .unwrap();
    assert!(count >= 8);
    let (mem, disk) = files(&shoal);
    assert!(mem >= 5 && disk >= 1, "{mem} in memory, {disk} on disk");
    let status = child.kill().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    let deadline = Instant::now() + Duration::from_secs(20);
    while files(&shoal) != (0, 0) || shoal.status().unwrap().objects.count != 0 {
        assert!(
            Instant::now() < deadline,
            "left behind: {:?}",
            shoal.objects()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The driver of `a_driver_killed_with_sigkill_leaves_no_objects_or_files` (a no-op
/// otherwise): puts objects, some nested, says "ready", and waits to be killed.
#[test]
fn doomed_driver_entry() {
    if std::env::var_os("SHOAL_TEST_DOOMED").is_none() {
        return;
    }
    shoal::init_with(InitOptions {
        require_daemon: true,
        ..Default::default()
    })
    .unwrap();
    let refs: Vec<ObjectRef<Blob>> = (500..508).map(|i| shoal::put(&blob(i)).unwrap()).collect();
    let outer = shoal::put(&refs[..2].to_vec()).unwrap();
    let small = shoal::put(&42u64).unwrap();
    println!("ready");
    let mut buf = String::new();
    let _ = std::io::stdin().read_line(&mut buf);
    drop((refs, outer, small));
}

/// Runs this test binary again as another program attached to our node: only the test
/// `entry`, with `env_flag` set (the entry does nothing without it). Returns once the child
/// printed the line `ready_line`.
fn child_program(shoal: &Shoal, entry: &str, env_flag: &str, ready_line: &str) -> KillOnDrop {
    use std::io::BufRead;
    let exe = std::env::current_exe().unwrap();
    let mut child = KillOnDrop::new(
        Command::new(exe)
            .args(["--exact", entry, "--nocapture", "--quiet"])
            .env(env_flag, "1")
            .env("SHOAL_SOCKET", shoal.socket())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let out = std::io::BufReader::new(child.child_mut().stdout.take().unwrap());
    let ready = out
        .lines()
        .map_while(Result::ok)
        .any(|l| l.trim() == ready_line);
    assert!(ready, "{entry} ended before it printed {ready_line:?}");
    child
}

#[shoal::remote]
fn view_in_task(r: ObjectRef<shoal::Bytes>) -> (bool, usize, u64) {
    let view = r.get_view_blocking().unwrap();
    let sum = view.iter().step_by(4096).map(|b| u64::from(*b)).sum();
    (view.is_mapped(), view.len(), sum)
}

#[test]
fn large_byte_buffers_are_read_in_place() {
    let _turn = serial();
    let shoal = node();
    let data: Vec<u8> = (0..(24usize << 20)).map(|i| (i % 251) as u8).collect();
    let r = shoal::put_bytes(&data).unwrap();
    // (Stored as a Vec<u8> would be: a unit test of the SDK checks the encodings.)
    let view = r.get_view_blocking().unwrap();
    assert!(view.is_mapped());
    assert!(view[..] == data[..]);
    r.verify_blocking().unwrap();
    // Another process maps the same file.
    let expected: u64 = data.iter().step_by(4096).map(|b| u64::from(*b)).sum();
    assert_eq!(
        view_in_task.remote(r.clone()).get_blocking().unwrap(),
        (true, data.len(), expected)
    );
    // A small buffer is viewed in its message.
    let small = shoal::put_bytes(b"tiny").unwrap();
    let v = small.get_view_blocking().unwrap();
    assert_eq!((&v[..], v.is_mapped()), (&b"tiny"[..], false));
    // A view stays valid after its object is freed.
    drop(r);
    assert_eq!(files(&shoal), (0, 0));
    assert!(view[..] == data[..]);
}

#[shoal::remote]
fn sum_in_task(r: ObjectRef<Blob>) -> u64 {
    let b = r.get_blocking().unwrap();
    b.0.iter().step_by(4096).map(|b| u64::from(*b)).sum()
}

#[test]
fn a_file_recycled_to_its_writer_holds_each_put_s_own_bytes() {
    use std::os::unix::fs::MetadataExt;
    let _turn = serial();
    let shoal = node();
    let store = PathBuf::from(shoal.status().unwrap().store_dir);
    let inode = |id: shoal::ObjectId| std::fs::metadata(store.join(id.to_hex())).unwrap().ino();
    let first = shoal::put(&blob(600)).unwrap();
    // (Read once its file is in place.)
    assert!(first.get_blocking().unwrap() == blob(600));
    let file = inode(first.id());
    drop(first);
    for seed in 601..604 {
        // The node hands this process the file it freed; the process writes it through
        // the mapping it kept, and every reader finds this put's bytes.
        let r = shoal::put(&blob(seed)).unwrap();
        assert!(r.get_blocking().unwrap() == blob(seed), "put {seed}");
        assert_eq!(inode(r.id()), file, "put {seed} got another file");
        let want: u64 = blob(seed)
            .0
            .iter()
            .step_by(4096)
            .map(|b| u64::from(*b))
            .sum();
        assert_eq!(sum_in_task.remote(r.clone()).get_blocking().unwrap(), want);
        r.verify_blocking().unwrap();
        drop(r);
    }
    assert_eq!(files(&shoal), (0, 0));
}

/// Serializes nothing, but the second time it is serialized (the first is the length pass)
/// it says so on stdout and blocks forever: a writer stuck halfway through an object.
struct StuckHalfway;

impl Serialize for StuckHalfway {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static CALLS: AtomicU32 = AtomicU32::new(0);
        if CALLS.fetch_add(1, Ordering::SeqCst) == 1 {
            println!("half-written");
            loop {
                std::thread::park();
            }
        }
        s.serialize_unit()
    }
}

#[test]
fn a_writer_killed_mid_write_leaves_nothing_visible() {
    let _turn = serial();
    let shoal = node();
    assert_eq!(files(&shoal), (0, 0));
    let mut child = child_program(
        &shoal,
        "stuck_writer_entry",
        "SHOAL_TEST_STUCK_WRITER",
        "half-written",
    );
    // Half an object is in the store, under a partial name only: no object exists.
    let store = PathBuf::from(shoal.status().unwrap().store_dir);
    let names: Vec<String> = std::fs::read_dir(&store)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(names[0].ends_with(".partial"), "{names:?}");
    assert_eq!(shoal.status().unwrap().objects.count, 0);
    assert!(shoal.status().unwrap().objects.store_used >= MB8 as u64);
    child.kill().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while files(&shoal) != (0, 0) || shoal.status().unwrap().objects.store_used != 0 {
        assert!(
            Instant::now() < deadline,
            "the partial object was not cleaned up"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(shoal.status().unwrap().objects.count, 0);
}

/// The writer of `a_writer_killed_mid_write_leaves_nothing_visible` (a no-op otherwise).
#[test]
fn stuck_writer_entry() {
    if std::env::var_os("SHOAL_TEST_STUCK_WRITER").is_none() {
        return;
    }
    shoal::init_with(InitOptions {
        require_daemon: true,
        ..Default::default()
    })
    .unwrap();
    let _ = shoal::put(&(blob(600), StuckHalfway));
    unreachable!("the put never finishes");
}
