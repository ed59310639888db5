//! A hostile guest: hand-written split rings in shared memfd memory (the vhost crate's
//! `Frontend` only sets the device up). Each case checks the answer (a status, or a used entry of
//! length 0 with no status for a chain that cannot be walked), that nothing outside the request
//! was touched, and that the queue, the other queues and other disks keep serving.

mod server_common;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use blockdev::{BlockDev, IoCtx, IoTag, SharedBuf};
use server_common::ring::*;
use server_common::{logged, mem_disk, serve, tempdir};
use vhost_user_blk::server::{ExportSettings, ServedExport};

const DISK: u64 = 1 << 20;
const SECTORS: u64 = DISK / 512;
const QSIZE: u16 = 16;
const TAG: IoTag = IoTag::data("test");

/// A served RAM disk and a hostile frontend attached to it.
struct Rig {
    fe: TestFrontend,
    dev: Arc<dyn BlockDev>,
    served: Option<ServedExport>,
    _dir: tempfile::TempDir,
    _serial: MutexGuard<'static, ()>,
}

/// Held by every rig: the tests count this process's fds, so they run one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

impl Rig {
    fn new(queues: usize, tweak: impl FnOnce(&mut ExportSettings)) -> Rig {
        let serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        let dir = tempdir();
        let dev = mem_disk(DISK);
        let served = serve(dir.path(), "hostile", dev.clone(), |s| {
            s.num_queues = queues as u16;
            s.queue_size = QSIZE;
            tweak(s);
        });
        let fe = TestFrontend::connect(&served.export.settings.socket, queues, QSIZE);
        Rig { fe, dev, served: Some(served), _dir: dir, _serial: serial }
    }

    /// Bytes `off..off+len` of the disk, read through the device (not the daemon).
    fn disk(&self, off: u64, len: usize) -> Vec<u8> {
        let io = IoCtx::new().expect("io ctx");
        let mut buf = SharedBuf::new(len);
        io.block_on(self.dev.read(&io, off, buf.io(), TAG)).expect("read the disk");
        buf.bytes().to_vec()
    }

    /// The queue still serves: a write then a read of sector `sector` round-trip.
    fn assert_serves(&mut self, q: usize, sector: u64) {
        let pattern: Vec<u8> = (0..512u32).map(|i| (i as u8) ^ (sector as u8) ^ 0x5a).collect();
        assert_eq!(self.fe.write(q, sector, &pattern), S_OK, "queue {q} no longer serves writes");
        let (st, back) = self.fe.read_sectors(q, sector, 512);
        assert_eq!((st, back), (S_OK, pattern), "queue {q} no longer serves reads");
    }

    /// Publish a chain written by the test at `head`, wait for its used entry: (id, len).
    fn submit_raw(&mut self, q: usize, head: u16) -> (u32, u32) {
        self.fe.submit(q, head)
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(s) = self.served.take() {
            s.stop();
        }
    }
}

fn d(addr: u64, len: u32, flags: u16) -> Desc {
    Desc { addr, len, flags, next: 0 }
}

/// A read chain (header, 512-byte buffer, status) with addresses for later checks.
fn read_chain(fe: &mut TestFrontend, sector: u64) -> (u64, u64, Vec<Desc>) {
    fe.reset_data();
    let hdr = fe.header(T_IN, sector);
    let buf = fe.alloc(512, 0xee);
    let st = fe.status_buf();
    (buf, st, vec![d(hdr, 16, 0), d(buf, 512, F_WRITE), d(st, 1, F_WRITE)])
}

#[test]
fn descriptor_loop_completes_empty_without_status_and_the_queue_keeps_serving() {
    let mut rig = Rig::new(1, |_| {});
    let (_, st, descs) = read_chain(&mut rig.fe, 0);
    let head = rig.fe.put_chain(0, 0, &descs);
    // The status descriptor links back to the data descriptor: 0 → 1 → 2 → 1 → ...
    rig.fe.put_desc(rig.fe.queues[0].desc, 2, Desc { next: 1, flags: F_WRITE | F_NEXT, ..descs[2] });

    let used = rig.submit_raw(0, head);

    assert_eq!(used, (u32::from(head), 0));
    assert_eq!(rig.fe.byte(st), S_UNTOUCHED, "a chain that cannot be walked got a status");
    rig.assert_serves(0, 3);
}

#[test]
fn direct_chain_through_every_descriptor_and_back_is_refused() {
    let mut rig = Rig::new(1, |_| {});
    rig.fe.reset_data();
    let hdr = rig.fe.header(T_IN, 0);
    let mut descs = vec![d(hdr, 16, 0)];
    for _ in 1..QSIZE {
        let b = rig.fe.alloc(512, 0);
        descs.push(d(b, 512, F_WRITE));
    }
    let head = rig.fe.put_chain(0, 0, &descs);
    // The last descriptor goes on to the first: a chain longer than the queue.
    let last = descs[QSIZE as usize - 1];
    rig.fe.put_desc(rig.fe.queues[0].desc, QSIZE - 1, Desc { flags: F_WRITE | F_NEXT, next: 0, ..last });

    assert_eq!(rig.submit_raw(0, head), (u32::from(head), 0));
    rig.assert_serves(0, 4);
}

#[test]
fn indirect_chain_longer_than_the_queue_gets_ioerr_and_reads_nothing() {
    let mut rig = Rig::new(1, |_| {});
    let n = 2 * QSIZE as usize;
    rig.fe.reset_data();
    let hdr = rig.fe.header(T_IN, 0);
    let bufs: Vec<u64> = (0..n - 2).map(|_| rig.fe.alloc(512, 0xee)).collect();
    let st = rig.fe.status_buf();
    let table = rig.fe.alloc(n * 16, 0);
    let mut descs = vec![d(hdr, 16, 0)];
    descs.extend(bufs.iter().map(|&b| d(b, 512, F_WRITE)));
    descs.push(d(st, 1, F_WRITE));
    for (i, x) in descs.iter().enumerate() {
        let next = if i + 1 < n { F_NEXT } else { 0 };
        rig.fe.put_desc(table, i as u16, Desc { flags: x.flags | next, next: i as u16 + 1, ..*x });
    }
    rig.fe.put_desc(rig.fe.queues[0].desc, 0, d(table, (n * 16) as u32, F_INDIRECT));

    assert_eq!(rig.submit_raw(0, 0), (0, 1));
    assert_eq!(rig.fe.byte(st), S_IOERR, "the status byte is not in the chain's last descriptor");
    for (i, &b) in bufs.iter().enumerate() {
        assert!(rig.fe.read(b, 512).iter().all(|&x| x == 0xee), "a refused read wrote into buffer {i}");
    }
    rig.assert_serves(0, 5);
}

#[test]
fn zero_length_descriptors_carry_no_bytes_and_the_request_succeeds() {
    let mut rig = Rig::new(1, |_| {});
    rig.assert_serves(0, 7); // puts a pattern at sector 7
    let want = rig.disk(7 * 512, 512);
    rig.fe.reset_data();
    let hdr = rig.fe.header(T_IN, 7);
    let empty = rig.fe.alloc(16, 0xcc);
    let a = rig.fe.alloc(256, 0);
    let b = rig.fe.alloc(256, 0);
    let st = rig.fe.status_buf();
    let descs = [
        d(hdr, 16, 0),
        d(empty, 0, 0),
        d(a, 256, F_WRITE),
        d(empty, 0, F_WRITE),
        d(b, 256, F_WRITE),
        d(st, 1, F_WRITE),
    ];
    let head = rig.fe.put_chain(0, 0, &descs);

    let (_, len) = rig.submit_raw(0, head);

    assert_eq!((rig.fe.byte(st), len), (S_OK, 513));
    assert_eq!([rig.fe.read(a, 256), rig.fe.read(b, 256)].concat(), want);
    assert!(rig.fe.read(empty, 16).iter().all(|&x| x == 0xcc), "a zero-length buffer was written");
}

#[test]
fn chain_without_a_whole_header_gets_ioerr() {
    let mut rig = Rig::new(1, |_| {});
    rig.fe.reset_data();
    let hdr = rig.fe.header(T_OUT, 0);
    let st = rig.fe.status_buf();
    // A zero-length header descriptor, then 8 readable bytes: less than the 16-byte header.
    let head = rig.fe.put_chain(0, 0, &[d(hdr, 0, 0), d(hdr, 8, 0), d(st, 1, F_WRITE)]);

    let (_, len) = rig.submit_raw(0, head);

    assert_eq!((rig.fe.byte(st), len), (S_IOERR, 1));
    // Only a status, no readable byte at all.
    let head = rig.fe.put_chain(0, 4, &[d(st, 1, F_WRITE)]);
    assert_eq!(rig.submit_raw(0, head), (u32::from(head), 1));
    assert_eq!(rig.fe.byte(st), S_IOERR);
    rig.assert_serves(0, 1);
}

#[test]
fn indirect_table_inside_an_indirect_table_is_refused() {
    let mut rig = Rig::new(1, |_| {});
    let (_, st, descs) = read_chain(&mut rig.fe, 0);
    let inner = rig.fe.alloc(48, 0);
    for (i, x) in descs.iter().enumerate() {
        let next = if i < 2 { F_NEXT } else { 0 };
        rig.fe.put_desc(inner, i as u16, Desc { flags: x.flags | next, next: i as u16 + 1, ..*x });
    }
    let outer = rig.fe.alloc(16, 0);
    rig.fe.put_desc(outer, 0, d(inner, 48, F_INDIRECT));
    rig.fe.put_desc(rig.fe.queues[0].desc, 0, d(outer, 16, F_INDIRECT));

    assert_eq!(rig.submit_raw(0, 0), (0, 0));
    assert_eq!(rig.fe.byte(st), S_UNTOUCHED);
    rig.assert_serves(0, 2);
}

#[test]
fn buffers_outside_guest_memory_or_wrapping_are_refused() {
    let mut rig = Rig::new(1, |_| {});
    let cases: [(u64, u32, u16); 4] = [
        (MEM_SIZE - 256, 512, F_WRITE),  // straddles the end of the only region
        (MEM_SIZE + 4096, 512, F_WRITE), // wholly outside
        (u64::MAX - 255, 512, F_WRITE),  // wraps around the address space
        (MEM_SIZE - 256, 512, 0),        // a write whose payload straddles the end
    ];
    for (i, &(addr, len, flags)) in cases.iter().enumerate() {
        rig.fe.reset_data();
        let kind = if flags & F_WRITE != 0 { T_IN } else { T_OUT };
        let hdr = rig.fe.header(kind, 0);
        let st = rig.fe.status_buf();
        let head = rig.fe.put_chain(0, 0, &[d(hdr, 16, 0), d(addr, len, flags), d(st, 1, F_WRITE)]);

        assert_eq!(rig.submit_raw(0, head), (u32::from(head), 0), "case {i}: {addr:#x}+{len}");
        assert_eq!(rig.fe.byte(st), S_UNTOUCHED, "case {i}");
    }
    // An indirect table that leaves guest memory.
    rig.fe.put_desc(rig.fe.queues[0].desc, 0, d(MEM_SIZE - 16, 48, F_INDIRECT));
    assert_eq!(rig.submit_raw(0, 0), (0, 0));
    assert!(rig.disk(0, DISK as usize).iter().all(|&b| b == 0), "a refused write reached the disk");
    rig.assert_serves(0, 1);
}

#[test]
fn reads_and_writes_beyond_capacity_or_straddling_the_end_get_ioerr() {
    let mut rig = Rig::new(1, |_| {});
    let page = vec![0x42u8; 1024];

    assert_eq!(rig.fe.read_sectors(0, SECTORS, 512).0, S_IOERR, "read at the capacity");
    assert_eq!(rig.fe.read_sectors(0, SECTORS - 1, 1024).0, S_IOERR, "read straddling the end");
    assert_eq!(rig.fe.read_sectors(0, u64::MAX / 512 + 1, 512).0, S_IOERR, "sector * 512 overflows");
    assert_eq!(rig.fe.read_sectors(0, u64::MAX, 512).0, S_IOERR, "last sector of u64");
    assert_eq!(rig.fe.write(0, SECTORS, &page[..512]), S_IOERR, "write at the capacity");
    assert_eq!(rig.fe.write(0, SECTORS - 1, &page), S_IOERR, "write straddling the end");
    assert_eq!(rig.fe.write(0, 0, &page[..100]), S_IOERR, "write of a partial block");

    assert!(rig.disk(DISK - 512, 512).iter().all(|&b| b == 0), "a refused write changed the last sector");
    assert!(rig.disk(0, 512).iter().all(|&b| b == 0), "a partial-block write changed sector 0");
    let (st, last) = rig.fe.read_sectors(0, SECTORS - 1, 512);
    assert_eq!((st, last.len()), (S_OK, 512), "the last sector is readable");
}

#[test]
fn writes_to_a_read_only_disk_get_ioerr_and_write_nothing() {
    let mut rig = Rig::new(1, |s| s.read_only = true);
    let cfg_ro = rig.fe.features & (1 << 5) != 0;
    assert!(cfg_ro, "VIRTIO_BLK_F_RO not offered");

    assert_eq!(rig.fe.write(0, 8, &[0x99u8; 4096]), S_IOERR);
    let seg = segment(0, 8, 0);
    let st_wz = rig.fe.request(0, T_WRITE_ZEROES, 0, &seg, 0).0;
    let st_discard = rig.fe.request(0, T_DISCARD, 0, &seg, 0).0;

    assert_ne!(st_wz, S_OK, "write-zeroes on a read-only disk succeeded");
    assert_ne!(st_discard, S_OK, "discard on a read-only disk succeeded");
    assert!(rig.disk(0, DISK as usize).iter().all(|&b| b == 0), "a read-only disk changed");
    assert_eq!(rig.fe.read_sectors(0, 8, 4096), (S_OK, vec![0u8; 4096]));
    assert_eq!(rig.fe.request(0, T_FLUSH, 0, &[], 0).0, S_OK, "flush on a read-only disk");
}

#[test]
fn flush_with_a_nonzero_sector_gets_ioerr() {
    let mut rig = Rig::new(1, |_| {});
    assert_eq!(rig.fe.request(0, T_FLUSH, 1, &[], 0).0, S_IOERR);
    assert_eq!(rig.fe.request(0, T_FLUSH, 0, &[], 0).0, S_OK);
}

#[test]
fn unknown_request_types_get_unsupp() {
    let mut rig = Rig::new(1, |_| {});
    for kind in [2u32, 3, 5, 7, 9, 10, 12, 14, 0x8000_0000, u32::MAX] {
        let (st, len, data) = rig.fe.request(0, kind, 0, &[], 64);
        assert_eq!((st, len), (S_UNSUPP, 1), "type {kind:#x}");
        assert!(data.iter().all(|&b| b == 0), "type {kind:#x} wrote into the buffer");
    }
    rig.assert_serves(0, 9);
}

fn segment(sector: u64, sectors: u32, flags: u32) -> [u8; 16] {
    let mut s = [0u8; 16];
    s[0..8].copy_from_slice(&sector.to_le_bytes());
    s[8..12].copy_from_slice(&sectors.to_le_bytes());
    s[12..16].copy_from_slice(&flags.to_le_bytes());
    s
}

#[test]
fn discard_and_write_zeroes_with_bad_flags_too_many_segments_or_out_of_range_are_refused() {
    let mut rig = Rig::new(1, |_| {});
    assert!(rig.fe.features & (1 << 13) != 0 && rig.fe.features & (1 << 14) != 0, "DISCARD/WRITE_ZEROES not offered");
    let data = vec![0x31u8; 8192];
    assert_eq!(rig.fe.write(0, 0, &data), S_OK);

    // Discard takes no flags; write-zeroes only UNMAP.
    assert_eq!(rig.fe.request(0, T_DISCARD, 0, &segment(0, 8, 1), 0).0, S_UNSUPP, "discard with UNMAP");
    assert_eq!(rig.fe.request(0, T_WRITE_ZEROES, 0, &segment(0, 8, 2), 0).0, S_UNSUPP, "write-zeroes flag 2");
    assert_eq!(rig.fe.request(0, T_WRITE_ZEROES, 0, &segment(0, 8, 1 << 31), 0).0, S_UNSUPP);
    // 33 segments: one more than max_discard_seg / max_write_zeroes_seg.
    let many: Vec<u8> = (0..33).flat_map(|i| segment(i, 1, 0)).collect();
    assert_eq!(rig.fe.request(0, T_DISCARD, 0, &many, 0).0, S_IOERR, "33 discard segments");
    assert_eq!(rig.fe.request(0, T_WRITE_ZEROES, 0, &many, 0).0, S_IOERR, "33 write-zeroes segments");
    // Out of range, straddling, a payload that is not whole segments, and no payload at all.
    assert_eq!(rig.fe.request(0, T_WRITE_ZEROES, 0, &segment(SECTORS, 1, 0), 0).0, S_IOERR);
    assert_eq!(rig.fe.request(0, T_WRITE_ZEROES, 0, &segment(SECTORS - 1, 2, 0), 0).0, S_IOERR);
    assert_eq!(rig.fe.request(0, T_DISCARD, 0, &segment(u64::MAX, 1, 0), 0).0, S_IOERR);
    assert_eq!(rig.fe.request(0, T_DISCARD, 0, &segment(0, 8, 0)[..12], 0).0, S_IOERR);
    assert_eq!(rig.fe.request(0, T_DISCARD, 0, &[], 0).0, S_IOERR);
    // A good segment after a bad one: the whole request is refused, nothing zeroed.
    let mixed = [segment(0, 8, 0), segment(SECTORS, 8, 0)].concat();
    assert_eq!(rig.fe.request(0, T_WRITE_ZEROES, 0, &mixed, 0).0, S_IOERR);

    assert_eq!(rig.disk(0, 8192), data, "a refused discard or write-zeroes changed data");
    assert_eq!(rig.fe.request(0, T_WRITE_ZEROES, 0, &segment(0, 8, 1), 0).0, S_OK, "a valid write-zeroes");
    assert!(rig.disk(0, 4096).iter().all(|&b| b == 0));
    assert_eq!(rig.disk(4096, 4096), data[4096..]);
}

#[test]
fn avail_index_jump_stops_only_that_queue_and_a_ring_reset_or_reconnect_recovers_it() {
    let mut rig = Rig::new(2, |_| {});
    // A second disk served by the same process, with its own frontend.
    let other_dir = tempdir();
    let other = serve(other_dir.path(), "bystander", mem_disk(DISK), |s| s.queue_size = QSIZE);
    let mut bystander = TestFrontend::connect(&other.export.settings.socket, 1, QSIZE);
    rig.assert_serves(0, 1);

    let reason = ["moved the avail index by more than the queue size", "export=hostile", "queue=0"];
    let logged_before = logged(&reason).len();

    // Act: queue 0's avail index moves by more than the queue size.
    let (_, st, descs) = read_chain(&mut rig.fe, 0);
    rig.fe.put_chain(0, 0, &descs);
    let jump = rig.fe.queues[0].avail_idx.wrapping_add(QSIZE + 1);
    rig.fe.set_avail_idx(0, jump);
    rig.fe.kick(0);

    // Assert: queue 0 answers nothing, even when kicked again; queue 1 and the other disk serve.
    assert_eq!(rig.fe.next_used(0, Duration::from_millis(300)), None, "a broken ring was served");
    rig.fe.kick(0);
    assert_eq!(rig.fe.next_used(0, Duration::from_millis(200)), None);
    assert_eq!(rig.fe.byte(st), S_UNTOUCHED);
    assert_eq!(logged(&reason).len(), logged_before + 1, "the stopped queue's reason is logged once");
    rig.assert_serves(1, 2);
    assert_eq!(bystander.write(0, 3, &[1u8; 512]), S_OK);

    // A ring reset (GET_VRING_BASE, then the rings set up afresh) brings queue 0 back.
    rig.fe.stop_queue(0);
    rig.fe.queues[0].avail_idx = 0;
    rig.fe.queues[0].used_seen = 0;
    rig.fe.start_queue(0);
    rig.assert_serves(0, 4);

    // Break it again, then a new connection serves it.
    let jump = rig.fe.queues[0].avail_idx.wrapping_add(3 * QSIZE);
    rig.fe.set_avail_idx(0, jump);
    rig.fe.kick(0);
    assert_eq!(rig.fe.next_used(0, Duration::from_millis(300)), None);
    let socket = rig.served.as_ref().expect("served").export.settings.socket.clone();
    rig.fe.reconnect(&socket, 2, QSIZE);
    rig.assert_serves(0, 5);
    rig.assert_serves(1, 6);
    drop(bystander);
    other.stop();
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}

#[test]
fn a_guest_flooding_requests_without_reaping_stays_bounded() {
    let mut rig = Rig::new(1, |_| {});
    rig.assert_serves(0, 2000); // the worker creates its io engine (ring, eventfds) on first use
    let fds_before = open_fds();
    // Every descriptor is the head of an indirect 8 KiB write (16 of them: the whole queue).
    rig.fe.reset_data();
    let payload = rig.fe.alloc(8192, 0x66);
    for h in 0..QSIZE {
        let hdr = rig.fe.header(T_OUT, u64::from(h) * 16);
        let st = rig.fe.status_buf();
        let table = rig.fe.alloc(48, 0);
        rig.fe.put_desc(table, 0, Desc { addr: hdr, len: 16, flags: F_NEXT, next: 1 });
        rig.fe.put_desc(table, 1, Desc { addr: payload, len: 8192, flags: F_NEXT, next: 2 });
        rig.fe.put_desc(table, 2, Desc { addr: st, len: 1, flags: F_WRITE, next: 0 });
        rig.fe.put_desc(rig.fe.queues[0].desc, h, d(table, 48, F_INDIRECT));
    }
    let export = rig.served.as_ref().unwrap().export.clone();
    let before = export.stats.snapshot();

    // Act: keep the ring full, never reading a used entry (only the used index, to stay within
    // the ring as the spec demands), and kick after every request.
    const TOTAL: u32 = 20_000;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut published = 0u32;
    let mut max_in_flight = 0;
    while published < TOTAL {
        let pending = rig.fe.queues[0].avail_idx.wrapping_sub(rig.fe.used_idx(0));
        if pending < QSIZE {
            rig.fe.publish(0, (published % u32::from(QSIZE)) as u16);
            rig.fe.kick(0);
            published += 1;
        } else {
            std::thread::yield_now();
        }
        max_in_flight = max_in_flight.max(export.stats.in_flight());
        assert!(Instant::now() < deadline, "the device stopped consuming after {published} requests");
    }
    while rig.fe.used_idx(0) != rig.fe.queues[0].avail_idx {
        assert!(Instant::now() < deadline, "the device did not finish the flood");
        std::thread::sleep(Duration::from_millis(1));
    }

    // Assert: every request ran, never more in flight than the queue holds, no fd leaked.
    let after = export.stats.snapshot();
    assert_eq!(after.writes - before.writes, u64::from(TOTAL));
    assert!(max_in_flight <= u64::from(QSIZE), "{max_in_flight} requests in flight on a queue of {QSIZE}");
    assert_eq!(export.stats.in_flight(), 0);
    assert!(open_fds() <= fds_before + 2, "fds grew from {fds_before} to {}", open_fds());
    rig.fe.queues[0].used_seen = rig.fe.used_idx(0);
    rig.assert_serves(0, 2000);
}
