//! The server driven by a real vhost-user-blk client: libblkio's `virtio-blk-vhost-user` driver.

mod server_common;

use blkio::ReqFlags;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use server_common::{mem_disk, serve, tempdir, Client};

const MIB: u64 = 1 << 20;

#[test]
fn mixed_random_writes_at_qd16_read_back_after_flush() {
    let dir = tempdir();
    mixed_random_writes_read_back(dir.path(), mem_disk(32 * MIB), |_| {});
}

/// The same over a raw file (every request an io_uring operation) whose worker's ring has a
/// kernel submission thread (`sqpoll=on`): nothing is submitted by `io_uring_enter`.
#[test]
fn mixed_random_writes_with_a_kernel_submission_thread() {
    let dir = tempdir();
    let path = dir.path().join("disk.raw");
    std::fs::File::create(&path).unwrap().set_len(32 * MIB).unwrap();
    let dev = blockdev::RawFile::open(&path, blockdev::OpenOptions::default()).unwrap();
    mixed_random_writes_read_back(dir.path(), std::sync::Arc::new(dev), |s| s.sqpoll_ms = 1);
}

/// 400 writes of 512 B to 128 KiB at queue depth 16, a flush, then every byte read back.
fn mixed_random_writes_read_back(
    dir: &std::path::Path,
    dev: std::sync::Arc<dyn blockdev::BlockDev>,
    tweak: impl FnOnce(&mut vhost_user_blk::server::ExportSettings),
) {
    let size = dev.info().size;
    let served = serve(dir, "qd16", dev, tweak);
    let lane = size / 16;
    let max_io = 128 * 1024;
    let mut c = Client::connect(&served.export.settings.socket, 1, 16 * max_io);
    let mut model = vec![0u8; size as usize];
    let mut rng = SmallRng::seed_from_u64(0x5eed);
    // Each of the 16 slots writes only inside its own lane, so in-flight writes never overlap.
    let submit = |c: &mut Client, model: &mut Vec<u8>, slot: usize, rng: &mut SmallRng| {
        let len = rng.gen_range(1..=(max_io / 512) as u64) * 512;
        let off = slot as u64 * lane + rng.gen_range(0..(lane - len) / 512) * 512;
        let buf_off = slot * max_io;
        let fill: u8 = rng.gen();
        for (i, b) in c.buf()[buf_off..buf_off + len as usize].iter_mut().enumerate() {
            *b = fill.wrapping_add(i as u8);
        }
        model[off as usize..(off + len) as usize].copy_from_slice(&c.buf()[buf_off..buf_off + len as usize]);
        let p = c.ptr(buf_off);
        c.queues[0].write(off, p, len as usize, slot, ReqFlags::empty());
    };
    for slot in 0..16 {
        submit(&mut c, &mut model, slot, &mut rng);
    }
    let mut completed = 0;
    while completed < 400 {
        for (slot, ret) in c.reap(0, 1) {
            assert_eq!(ret, 0, "write failed");
            completed += 1;
            if completed + 16 <= 400 {
                submit(&mut c, &mut model, slot, &mut rng);
            }
        }
    }
    assert_eq!(c.flush(0), 0);
    for chunk in 0..(size / MIB) {
        let (ret, data) = c.read(0, chunk * MIB, MIB as usize);
        assert_eq!(ret, 0);
        assert!(data == model[(chunk * MIB) as usize..((chunk + 1) * MIB) as usize], "mismatch in MiB {chunk}");
    }
    let stats = served.export.stats.snapshot();
    assert_eq!((stats.writes, stats.errors, stats.in_flight), (400, 0, 0));
    drop(c);
    assert!(served.stop());
}

#[test]
fn discard_and_write_zeroes_read_back_zeros() {
    let dir = tempdir();
    let served = serve(dir.path(), "zeroes", mem_disk(4 * MIB), |_| {});
    let mut c = Client::connect(&served.export.settings.socket, 1, MIB as usize);
    assert_eq!(c.write(0, 0, &vec![0xaa; 256 * 1024]), 0);
    assert_eq!(c.one(0, |q, _| q.write_zeroes(4096, 8192, 0, ReqFlags::empty())), 0);
    assert_eq!(c.one(0, |q, _| q.write_zeroes(65536, 4096, 0, ReqFlags::NO_UNMAP)), 0);
    assert_eq!(c.one(0, |q, _| q.discard(131072, 65536, 0, ReqFlags::empty())), 0);
    let (ret, data) = c.read(0, 0, 256 * 1024);
    assert_eq!(ret, 0);
    assert!(data[..4096].iter().all(|&b| b == 0xaa));
    assert!(data[4096..12288].iter().all(|&b| b == 0));
    assert!(data[12288..65536].iter().all(|&b| b == 0xaa));
    assert!(data[65536..69632].iter().all(|&b| b == 0));
    // MemDisk discards read back as zeros.
    assert!(data[131072..196608].iter().all(|&b| b == 0));
    assert!(data[196608..].iter().all(|&b| b == 0xaa));
    drop(c);
    served.stop();
}

#[test]
fn two_queues_see_each_others_writes() {
    let dir = tempdir();
    let served = serve(dir.path(), "mq", mem_disk(8 * MIB), |s| s.num_queues = 2);
    let mut c = Client::connect(&served.export.settings.socket, 2, MIB as usize);
    assert_eq!(c.queues.len(), 2);
    let a: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
    let b: Vec<u8> = (0..65536u32).map(|i| (i % 241) as u8).collect();
    assert_eq!(c.write(0, 0, &a), 0);
    assert_eq!(c.write(1, MIB, &b), 0);
    assert_eq!(c.flush(1), 0);
    let (ra, got_a) = c.read(1, 0, a.len());
    let (rb, got_b) = c.read(0, MIB, b.len());
    assert_eq!((ra, rb), (0, 0));
    assert!(got_a == a && got_b == b, "queues disagree");
    drop(c);
    served.stop();
}

#[test]
fn next_frontend_is_served_after_a_disconnect() {
    let dir = tempdir();
    let served = serve(dir.path(), "reconnect", mem_disk(4 * MIB), |_| {});
    let sock = served.export.settings.socket.clone();
    let data = vec![0x5a; 8192];
    {
        let mut c = Client::connect(&sock, 1, MIB as usize);
        assert_eq!(c.write(0, 512 * 1024, &data), 0);
    }
    for _ in 0..3 {
        let mut c = Client::connect(&sock, 1, MIB as usize);
        let (ret, got) = c.read(0, 512 * 1024, data.len());
        assert_eq!(ret, 0);
        assert!(got == data, "data lost across reconnect");
    }
    assert!(served.export.stats.snapshot().connections >= 4);
    served.stop();
}

#[test]
fn read_only_export_refuses_writes_and_serves_reads() {
    let dir = tempdir();
    let served = serve(dir.path(), "ro", mem_disk(MIB), |s| s.read_only = true);
    let sock = served.export.settings.socket.clone();
    assert!(Client::try_connect(&sock, 1, 65536).is_err(), "a writable open of a read-only device must fail");
    let mut c = Client::connect_with(&sock, 1, 65536, true).unwrap();
    assert!(c.write(0, 0, &[1u8; 4096]) < 0);
    let (ret, got) = c.read(0, 0, 4096);
    assert_eq!(ret, 0);
    assert!(got.iter().all(|&b| b == 0));
    assert!(c.read(0, MIB, 512).0 < 0, "read past the end must fail");
    drop(c);
    served.stop();
}

#[test]
fn raw_file_export_is_flushed_to_the_file_on_stop() {
    let dir = tempdir();
    let path = dir.path().join("disk.raw");
    std::fs::File::create(&path).unwrap().set_len(4 * MIB).unwrap();
    let dev = blockdev::RawFile::open(&path, blockdev::OpenOptions::default()).unwrap();
    let served = serve(dir.path(), "raw", std::sync::Arc::new(dev), |_| {});
    let mut c = Client::connect(&served.export.settings.socket, 1, MIB as usize);
    let data: Vec<u8> = (0..65536u32).map(|i| (i * 7) as u8).collect();
    assert_eq!(c.write(0, 3 * MIB, &data), 0);
    drop(c);
    assert!(served.stop());
    let file = std::fs::read(&path).unwrap();
    assert_eq!(&file[3 * MIB as usize..3 * MIB as usize + data.len()], &data[..]);
}

#[test]
fn queues_sharing_a_worker_thread_all_serve() {
    let dir = tempdir();
    let served = serve(dir.path(), "qpt", mem_disk(8 * MIB), |s| {
        s.num_queues = 3;
        s.queues_per_thread = 2;
    });
    let mut c = Client::connect(&served.export.settings.socket, 3, MIB as usize);
    assert_eq!(c.queues.len(), 3);
    // Each queue writes its own pattern; another queue reads it back.
    for q in 0..3usize {
        let data: Vec<u8> = (0..16384u32).map(|i| (i % 239) as u8 ^ q as u8).collect();
        assert_eq!(c.write(q, q as u64 * MIB, &data), 0, "queue {q} write");
        let (r, back) = c.read((q + 1) % 3, q as u64 * MIB, data.len());
        assert_eq!(r, 0);
        assert!(back == data, "queue {} read other data than queue {q} wrote", (q + 1) % 3);
    }
    assert_eq!(served.export.stats.snapshot().writes, 3);
    drop(c);
    served.stop();
}

/// More queue threads with `sqpoll` than the machine has CPUs: the daemon says at start that
/// the polling threads will compete (and still serves); with as many threads as fit it is silent.
#[test]
fn sqpoll_on_more_queue_threads_than_cpus_is_warned_about() {
    let dir = tempdir();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let queues = cpus.min(64) as u16;
    let served = serve(dir.path(), "sqpoll-many", mem_disk(MIB), |s| {
        s.num_queues = queues;
        s.sqpoll_ms = 1;
    });
    let warned = server_common::logged(&["sqpoll-many", "compete for CPUs"]);
    assert_eq!(warned.len(), 1, "{queues} queue threads with sqpoll on {cpus} CPUs: {warned:?}");
    let mut c = Client::connect(&served.export.settings.socket, 1, 4096);
    assert_eq!(c.write(0, 0, &[7u8; 4096]), 0);
    drop(c);
    served.stop();
    let quiet = serve(dir.path(), "sqpoll-one", mem_disk(MIB), |s| s.sqpoll_ms = 1);
    if cpus >= 2 {
        assert!(server_common::logged(&["sqpoll-one", "compete"]).is_empty(), "one queue thread on {cpus} CPUs");
    }
    quiet.stop();
}
