//! RbdDev against a real one-node Ceph cluster (scripts/ceph-dev.sh): data round trips with
//! `rbd export`/`rbd import`, several worker threads on one image, the exclusive lock, snapshots,
//! resize, and bad input.

use std::sync::Arc;
use std::time::{Duration, Instant};

use blockdev::{BlockDev, ErrorKind, IoCtx, IoTag, SharedBuf};
use rand::{Rng, SeedableRng};
use rbd::testing::{cluster, rbd, ScratchImage};
use rbd::{RbdConfig, RbdDev};

const MIB: u64 = 1 << 20;

fn config(img: &ScratchImage) -> RbdConfig {
    let mut c = RbdConfig::new("rbd", img.name.clone());
    c.conf = Some(img.conf.clone());
    c.timeout = Duration::from_secs(20);
    c
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::rngs::SmallRng::seed_from_u64(seed).fill(&mut v[..]);
    v
}

fn write(dev: &dyn BlockDev, io: &IoCtx, off: u64, data: &[u8]) {
    let mut b = SharedBuf::from_slice(data);
    io.block_on(dev.write(io, off, b.io(), false, IoTag::DATA)).unwrap();
}

fn read(dev: &dyn BlockDev, io: &IoCtx, off: u64, len: usize) -> Vec<u8> {
    let mut b = SharedBuf::new(len);
    io.block_on(dev.read(io, off, b.io(), IoTag::DATA)).unwrap();
    b.bytes().to_vec()
}

#[test]
fn writes_through_strata_read_back_with_rbd_export() {
    let Some(conf) = cluster("writes_through_strata_read_back_with_rbd_export") else { return };
    let img = ScratchImage::create(&conf, "strata-export", 16 * MIB);
    let dev = RbdDev::open(&config(&img)).unwrap();
    assert_eq!(dev.info().size, 16 * MIB);
    assert!(!dev.info().read_only);
    let io = IoCtx::new().unwrap();
    let mut expect = vec![0u8; (16 * MIB) as usize];
    // Across object boundaries (4 MiB objects), vectored, and a write-zeroes and a FUA write.
    for (i, (off, len)) in
        [(0u64, 4096usize), (4 * MIB - 8192, 64 * 1024), (9 * MIB + 512, 512 * 3)].into_iter().enumerate()
    {
        let data = pattern(i as u64, len);
        write(&dev, &io, off, &data);
        expect[off as usize..off as usize + len].copy_from_slice(&data);
    }
    let data = pattern(9, 8192);
    let mut b = SharedBuf::from_slice(&data);
    io.block_on(dev.write(&io, 12 * MIB, b.io(), true, IoTag::DATA)).unwrap();
    expect[(12 * MIB) as usize..(12 * MIB) as usize + 8192].copy_from_slice(&data);
    io.block_on(dev.write_zeroes(&io, 4 * MIB - 4096, 4096, false, IoTag::DATA)).unwrap();
    expect[(4 * MIB - 4096) as usize..(4 * MIB) as usize].fill(0);
    io.block_on(dev.flush(&io, IoTag::DATA)).unwrap();
    assert_eq!(read(&dev, &io, 0, (16 * MIB) as usize), expect, "strata reads back what it wrote");
    drop(dev);
    assert!(img.export() == expect, "rbd export shows the bytes strata wrote");
}

#[test]
fn an_image_filled_by_rbd_import_reads_back_through_strata() {
    let Some(conf) = cluster("an_image_filled_by_rbd_import_reads_back_through_strata") else { return };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("src.img");
    let data = pattern(42, (8 * MIB) as usize);
    std::fs::write(&file, &data).unwrap();
    let img = ScratchImage { conf: conf.clone(), name: format!("strata-import-{}", std::process::id()) };
    rbd(&conf, &["import", "--no-progress", file.to_str().unwrap(), &img.spec()]);
    let dev = RbdDev::open(&config(&img)).unwrap();
    let io = IoCtx::new().unwrap();
    assert_eq!(dev.info().size, 8 * MIB);
    // A vectored read of many segments straight into one buffer, in 1 MiB pieces.
    for off in (0..8 * MIB).step_by(MIB as usize) {
        assert!(read(&dev, &io, off, MIB as usize) == data[off as usize..(off + MIB) as usize], "at {off}");
    }
}

#[test]
fn workers_on_several_threads_share_one_image() {
    let Some(conf) = cluster("workers_on_several_threads_share_one_image") else { return };
    let img = ScratchImage::create(&conf, "strata-threads", 8 * MIB);
    let dev: Arc<dyn BlockDev> = Arc::new(RbdDev::open(&config(&img)).unwrap());
    // Three workers, each with its own engine, each keeping 16 requests in flight on its own
    // region: completions drained by one worker's loop must reach the others'.
    let threads: Vec<_> = (0..3u64)
        .map(|t| {
            let dev = dev.clone();
            std::thread::spawn(move || {
                let io = IoCtx::new().unwrap();
                let base = t * 2 * MIB;
                for round in 0..3u64 {
                    let futs: Vec<_> = (0..16u64)
                        .map(|i| {
                            let mut b = SharedBuf::from_slice(&pattern(t * 1000 + round * 100 + i, 4096));
                            let f = dev.write(&io, base + i * 65536, b.io(), false, IoTag::DATA);
                            io.spawn(f)
                        })
                        .collect();
                    for f in futs {
                        io.block_on(f).unwrap();
                    }
                }
                for i in 0..16u64 {
                    let got = read(&*dev, &io, base + i * 65536, 4096);
                    assert!(got == pattern(t * 1000 + 200 + i, 4096), "thread {t} request {i}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn a_second_writer_is_refused_until_the_first_lets_go() {
    let Some(conf) = cluster("a_second_writer_is_refused_until_the_first_lets_go") else { return };
    let img = ScratchImage::create(&conf, "strata-lock", 4 * MIB);
    let a = RbdDev::open(&config(&img)).unwrap();
    let io = IoCtx::new().unwrap();
    write(&a, &io, 0, &pattern(1, 4096));
    io.block_on(a.flush(&io, IoTag::DATA)).unwrap();
    let t = Instant::now();
    let e = RbdDev::open(&config(&img)).err().expect("a second writable open must be refused");
    assert_eq!(e.kind(), ErrorKind::Locked, "{e}");
    assert!(e.to_string().contains(&img.spec()) && e.to_string().contains("held for writing"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(20), "refused promptly, took {:?}", t.elapsed());
    // A reader is not refused and sees the writer's flushed data.
    let mut ro = config(&img);
    ro.read_only = true;
    let r = RbdDev::open(&ro).unwrap();
    assert!(r.info().read_only);
    assert_eq!(read(&r, &io, 0, 4096), pattern(1, 4096));
    let mut b = SharedBuf::new(4096);
    let e = io.block_on(r.write(&io, 0, b.io(), false, IoTag::DATA)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ReadOnly);
    drop(r);
    // The first lets go: now the second may write.
    drop(a);
    let b2 = RbdDev::open(&config(&img)).unwrap();
    write(&b2, &io, 4096, &pattern(2, 4096));
    assert_eq!(read(&b2, &io, 0, 8192)[..4096], pattern(1, 4096)[..]);
}

#[test]
fn a_snapshot_is_served_read_only() {
    let Some(conf) = cluster("a_snapshot_is_served_read_only") else { return };
    let img = ScratchImage::create(&conf, "strata-snap", 4 * MIB);
    let io = IoCtx::new().unwrap();
    {
        let dev = RbdDev::open(&config(&img)).unwrap();
        write(&dev, &io, 0, &pattern(5, 4096));
        io.block_on(dev.flush(&io, IoTag::DATA)).unwrap();
    }
    rbd(&conf, &["snap", "create", &format!("{}@s1", img.spec())]);
    let dev = RbdDev::open(&config(&img)).unwrap();
    write(&dev, &io, 0, &pattern(6, 4096));
    let mut cfg = config(&img);
    cfg.snapshot = Some("s1".into());
    let snap = RbdDev::open(&cfg).unwrap();
    assert!(snap.info().read_only);
    assert_eq!(read(&snap, &io, 0, 4096), pattern(5, 4096), "the snapshot's data, not the head's");
    let mut b = SharedBuf::new(4096);
    let e = io.block_on(snap.write(&io, 0, b.io(), false, IoTag::DATA)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ReadOnly);
    assert!(e.to_string().contains("@s1"), "{e}");
    cfg.snapshot = Some("nope".into());
    let e = RbdDev::open(&cfg).err().unwrap();
    assert!(e.to_string().contains("snapshot 'nope'"), "{e}");
}

#[test]
fn a_resize_is_seen_by_refresh_size() {
    let Some(conf) = cluster("a_resize_is_seen_by_refresh_size") else { return };
    let img = ScratchImage::create(&conf, "strata-resize", 4 * MIB);
    let dev = RbdDev::open(&config(&img)).unwrap();
    rbd(&conf, &["resize", "--no-progress", "--size", "8M", &img.spec()]);
    let t = Instant::now();
    let mut size = dev.refresh_size().unwrap();
    while size != 8 * MIB && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
        size = dev.refresh_size().unwrap();
    }
    assert_eq!(size, 8 * MIB);
    assert_eq!(dev.info().size, 8 * MIB);
    let io = IoCtx::new().unwrap();
    write(&dev, &io, 6 * MIB, &pattern(7, 4096));
    assert_eq!(read(&dev, &io, 6 * MIB, 4096), pattern(7, 4096));
}

#[test]
fn bad_names_are_refused_with_what_is_wrong() {
    let Some(conf) = cluster("bad_names_are_refused_with_what_is_wrong") else { return };
    let with = |pool: &str, image: &str| {
        let mut c = RbdConfig::new(pool, image);
        c.conf = Some(conf.clone());
        c.timeout = Duration::from_secs(10);
        RbdDev::open(&c).err().expect("must fail")
    };
    let e = with("nosuchpool", "x");
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(e.to_string().contains("pool 'nosuchpool' does not exist"), "{e}");
    let e = with("rbd", "nosuchimage");
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(e.to_string().contains("rbd/nosuchimage") && e.to_string().contains("no such image"), "{e}");
    for bad in ["a/b", "a@b"] {
        let e = with("rbd", bad);
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
        assert!(e.to_string().contains(&format!("image='{bad}'")), "{e}");
    }
    let mut c = RbdConfig::new("rbd", "x");
    c.conf = Some("/nonexistent/ceph.conf".into());
    let e = RbdDev::open(&c).err().unwrap();
    assert!(e.to_string().contains("conf=/nonexistent/ceph.conf"), "{e}");
    c.conf = Some(conf.clone());
    c.keyring = Some("/nonexistent/keyring".into());
    let e = RbdDev::open(&c).err().unwrap();
    assert!(e.to_string().contains("keyring=/nonexistent/keyring"), "{e}");
    // A keyring that exists but holds the wrong key (scripts/ceph-dev.sh's cluster runs cephx),
    // and the right keyring with a user the cluster does not know.
    let scratch = tempfile::tempdir().unwrap();
    let wrong = scratch.path().join("wrong.keyring");
    std::fs::write(&wrong, "[client.admin]\n\tkey = AQAAAAAAAAAAABAAAAECAwQFBgcICQoLDA0ODw==\n").unwrap();
    c.keyring = Some(wrong.clone());
    c.timeout = Duration::from_secs(5);
    let e = RbdDev::open(&c).err().expect("a wrong key must be refused");
    let msg = e.to_string();
    assert!(msg.contains("the cluster refused client.admin") && msg.contains(&wrong.display().to_string()), "{msg}");
    c.keyring = None;
    c.id = Some("nobody-here".into());
    let e = RbdDev::open(&c).err().expect("an unknown user must be refused");
    assert!(e.to_string().contains("client.nobody-here"), "{e}");
}

#[test]
fn a_cluster_that_does_not_answer_fails_within_the_timeout() {
    // No cluster needed: a conf whose monitor nobody serves (as after `ceph-dev.sh stop`).
    if rbd::ffi::api().is_err() {
        eprintln!("SKIPPED a_cluster_that_does_not_answer_fails_within_the_timeout: librbd is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("ceph.conf");
    std::fs::write(
        &conf,
        "[global]\nfsid = 00000000-0000-0000-0000-000000000001\nmon host = v2:127.0.0.1:1\nauth cluster required = none\n\
         auth service required = none\nauth client required = none\n",
    )
    .unwrap();
    let mut c = RbdConfig::new("rbd", "vm1");
    c.conf = Some(conf.clone());
    c.timeout = Duration::from_secs(3);
    let t = Instant::now();
    let e = RbdDev::open(&c).err().expect("no cluster: must fail");
    let took = t.elapsed();
    assert!(took < Duration::from_secs(10), "failed after {took:?}, timeout was 3 s");
    let msg = e.to_string();
    assert!(
        msg.contains("rbd/vm1") && msg.contains(&conf.display().to_string()) && msg.contains("127.0.0.1:1"),
        "{msg}"
    );
    assert!(msg.contains("cannot connect"), "{msg}");
}
