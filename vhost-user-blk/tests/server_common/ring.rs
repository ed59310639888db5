//! A hostile test frontend: the vhost crate's `Frontend` sets the device up, then split
//! virtqueues are written by hand in shared memfd "guest" memory, so a test can put any
//! descriptor, any avail index and any address into the rings (virtio 1.2, 2.7).
//!
//! Layout of the guest memory (one memfd region at guest address 0, `MEM_SIZE` bytes):
//! queue `i` has its descriptor table at `i * QUEUE_AREA`, its avail ring 16 KiB later and its
//! used ring 32 KiB later; data buffers are handed out from `DATA_START` upwards.

#![allow(dead_code)]

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::Path;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserInflight};
use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Size of the guest memory.
pub const MEM_SIZE: u64 = 8 << 20;
/// Bytes of guest memory reserved per queue for its three rings.
pub const QUEUE_AREA: u64 = 0x10000;
/// First guest address handed out for data buffers.
pub const DATA_START: u64 = 0x100000;

/// Descriptor flags.
pub const F_NEXT: u16 = 1;
/// Device-writable buffer.
pub const F_WRITE: u16 = 2;
/// The buffer is an indirect descriptor table.
pub const F_INDIRECT: u16 = 4;

/// virtio-blk request types.
pub const T_IN: u32 = 0;
/// Write.
pub const T_OUT: u32 = 1;
/// Flush.
pub const T_FLUSH: u32 = 4;
/// Device ID.
pub const T_GET_ID: u32 = 8;
/// Discard.
pub const T_DISCARD: u32 = 11;
/// Write zeroes.
pub const T_WRITE_ZEROES: u32 = 13;

/// Status bytes.
pub const S_OK: u8 = 0;
/// I/O error.
pub const S_IOERR: u8 = 1;
/// Unsupported request.
pub const S_UNSUPP: u8 = 2;
/// What a status byte holds before the device answers (no valid status has this value).
pub const S_UNTOUCHED: u8 = 0xa5;

const VIRTIO_F_VERSION_1: u64 = 1 << 32;
const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
/// The used ring's flag by which a device without EVENT_IDX asks not to be kicked.
pub const USED_F_NO_NOTIFY: u16 = 1;
const DEVICE_BITS: u64 = (1 << 24) - 1;

/// One descriptor as the guest writes it.
#[derive(Debug, Clone, Copy)]
pub struct Desc {
    /// Guest address of the buffer.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// F_NEXT, F_WRITE, F_INDIRECT.
    pub flags: u16,
    /// Next descriptor index when F_NEXT is set.
    pub next: u16,
}

/// A hand-driven split virtqueue.
pub struct TestQueue {
    /// Queue index.
    pub index: usize,
    /// Queue size.
    pub size: u16,
    /// Guest address of the descriptor table.
    pub desc: u64,
    /// Guest address of the avail ring.
    pub avail: u64,
    /// Guest address of the used ring.
    pub used: u64,
    /// Next avail index the guest publishes.
    pub avail_idx: u16,
    /// Used entries already read.
    pub used_seen: u16,
    /// Kick eventfd (guest → device).
    pub kick: EventFd,
    /// Call eventfd (device → guest).
    pub call: EventFd,
}

/// A connected, negotiated frontend with its guest memory and queues.
pub struct TestFrontend {
    /// The vhost-user connection.
    pub fe: Frontend,
    /// The guest memory (shared with the backend).
    pub mem: GuestMemoryMmap,
    /// The started queues.
    pub queues: Vec<TestQueue>,
    /// Negotiated virtio features.
    pub features: u64,
    /// Next free data address.
    next_data: u64,
    /// The in-flight region, when negotiated (kept across [`TestFrontend::resume_after_crash`]).
    pub inflight: Option<(VhostUserInflight, File)>,
}

/// A memfd of `size` bytes (zeroed).
pub fn memfd(size: u64) -> File {
    // SAFETY: memfd_create with a valid NUL-terminated name; the fd is checked below.
    let fd = unsafe { libc::memfd_create(c"strata-test".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size).expect("size the memfd");
    file
}

fn memfd_memory(size: u64) -> GuestMemoryMmap {
    // SAFETY: memfd_create with a valid NUL-terminated name; the fd is checked below.
    let fd = unsafe { libc::memfd_create(c"strata-test-guest".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size).expect("size the memfd");
    GuestMemoryMmap::from_ranges_with_files([(GuestAddress(0), size as usize, Some(FileOffset::new(file, 0)))])
        .expect("map guest memory")
}

/// Connect to `socket` and negotiate: SET_OWNER, protocol features CONFIG, MQ, REPLY_ACK and
/// `extra` (as far as offered), virtio features (INDIRECT_DESC, EVENT_IDX if asked), and
/// SET_MEM_TABLE with `mem`.
fn negotiate(
    socket: &Path,
    num_queues: usize,
    extra: VhostUserProtocolFeatures,
    event_idx: bool,
    mem: &GuestMemoryMmap,
) -> (Frontend, u64) {
    let mut fe = Frontend::connect(socket, num_queues as u64).expect("vhost-user connect");
    fe.set_owner().expect("SET_OWNER");
    let offered = fe.get_features().expect("GET_FEATURES");
    let protocol = fe.get_protocol_features().expect("GET_PROTOCOL_FEATURES");
    let wanted = VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::REPLY_ACK
        | extra;
    assert!(protocol.contains(extra), "the backend does not offer {extra:?}");
    fe.set_protocol_features(protocol & wanted).expect("SET_PROTOCOL_FEATURES");
    let ring_bits = VIRTIO_RING_F_INDIRECT_DESC | if event_idx { VIRTIO_RING_F_EVENT_IDX } else { 0 };
    let features =
        (offered & (DEVICE_BITS | VIRTIO_F_VERSION_1 | ring_bits)) | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
    fe.set_features(features).expect("SET_FEATURES");
    let regions = mem
        .iter()
        .map(VhostUserMemoryRegionInfo::from_guest_region)
        .collect::<Result<Vec<_>, _>>()
        .expect("describe guest memory");
    fe.set_mem_table(&regions).expect("SET_MEM_TABLE");
    (fe, features)
}

impl TestFrontend {
    /// Connect to `socket`, negotiate (INDIRECT_DESC, no EVENT_IDX: the backend then signals
    /// every batch) and start `num_queues` queues of `queue_size`.
    pub fn connect(socket: &Path, num_queues: usize, queue_size: u16) -> TestFrontend {
        TestFrontend::connect_with(socket, num_queues, queue_size, false)
    }

    /// As [`TestFrontend::connect`], negotiating EVENT_IDX too when `event_idx` is set (the
    /// test still kicks and reaps as it likes; [`TestFrontend::avail_event`] shows what the
    /// device asked for).
    pub fn connect_with(socket: &Path, num_queues: usize, queue_size: u16, event_idx: bool) -> TestFrontend {
        let mem = memfd_memory(MEM_SIZE);
        let (fe, features) = negotiate(socket, num_queues, VhostUserProtocolFeatures::empty(), event_idx, &mem);
        let mut t = TestFrontend { fe, mem, queues: Vec::new(), features, next_data: DATA_START, inflight: None };
        for i in 0..num_queues {
            let q = t.new_queue(i, queue_size);
            t.queues.push(q);
            t.start_queue(i);
        }
        t
    }

    /// As [`TestFrontend::connect`], negotiating the protocol features `extra` as well.
    pub fn connect_protocol(
        socket: &Path,
        num_queues: usize,
        queue_size: u16,
        extra: VhostUserProtocolFeatures,
    ) -> TestFrontend {
        let mem = memfd_memory(MEM_SIZE);
        let (fe, features) = negotiate(socket, num_queues, extra, false, &mem);
        let mut t = TestFrontend { fe, mem, queues: Vec::new(), features, next_data: DATA_START, inflight: None };
        for i in 0..num_queues {
            let q = t.new_queue(i, queue_size);
            t.queues.push(q);
            t.start_queue(i);
        }
        t
    }

    /// As [`TestFrontend::connect`], with in-flight tracking: GET_INFLIGHT_FD for the queues,
    /// then SET_INFLIGHT_FD with the region the backend made, before any ring starts.
    pub fn connect_inflight(socket: &Path, num_queues: usize, queue_size: u16) -> TestFrontend {
        let mem = memfd_memory(MEM_SIZE);
        let (mut fe, features) = negotiate(socket, num_queues, VhostUserProtocolFeatures::INFLIGHT_SHMFD, false, &mem);
        let ask = VhostUserInflight { mmap_size: 0, mmap_offset: 0, num_queues: num_queues as u16, queue_size };
        let (msg, file) = fe.get_inflight_fd(&ask).expect("GET_INFLIGHT_FD");
        fe.set_inflight_fd(&msg, file.as_raw_fd()).expect("SET_INFLIGHT_FD");
        let mut t =
            TestFrontend { fe, mem, queues: Vec::new(), features, next_data: DATA_START, inflight: Some((msg, file)) };
        for i in 0..num_queues {
            let q = t.new_queue(i, queue_size);
            t.queues.push(q);
            t.start_queue(i);
        }
        t
    }

    /// Connect with in-flight tracking and hand the backend the region `msg`/`file` (which
    /// the test prepared, garbage and all) before the rings start: the started frontend, or
    /// the backend's refusal of SET_INFLIGHT_FD.
    pub fn connect_given_region(
        socket: &Path,
        num_queues: usize,
        queue_size: u16,
        msg: VhostUserInflight,
        file: File,
    ) -> Result<TestFrontend, vhost::Error> {
        let mem = memfd_memory(MEM_SIZE);
        let (mut fe, features) = negotiate(socket, num_queues, VhostUserProtocolFeatures::INFLIGHT_SHMFD, false, &mem);
        fe.set_inflight_fd(&msg, file.as_raw_fd())?;
        // SET_INFLIGHT_FD is not acknowledged by the vhost crate's frontend: a round trip shows
        // whether the backend took it or hung up.
        fe.get_features()?;
        let mut t =
            TestFrontend { fe, mem, queues: Vec::new(), features, next_data: DATA_START, inflight: Some((msg, file)) };
        for i in 0..num_queues {
            let q = t.new_queue(i, queue_size);
            t.queues.push(q);
            t.start_queue(i);
        }
        Ok(t)
    }

    /// Reconnect to `socket` (a new daemon, the old one gone) as QEMU does when its backend
    /// died: the same guest memory and rings, the in-flight region given back if there is one,
    /// and each ring restarted from its used index (the backend's state was lost, so QEMU
    /// falls back to the used index as the next avail index). Requests already in the avail
    /// ring stay there.
    pub fn resume_after_crash(&mut self, socket: &Path) {
        let extra = if self.inflight.is_some() {
            VhostUserProtocolFeatures::INFLIGHT_SHMFD
        } else {
            VhostUserProtocolFeatures::empty()
        };
        let (mut fe, _) =
            negotiate(socket, self.queues.len(), extra, self.features & VIRTIO_RING_F_EVENT_IDX != 0, &self.mem);
        if let Some((msg, file)) = &self.inflight {
            fe.set_inflight_fd(msg, file.as_raw_fd()).expect("SET_INFLIGHT_FD");
        }
        self.fe = fe;
        for i in 0..self.queues.len() {
            let used = self.used_idx(i);
            self.start_queue_at(i, used);
        }
    }

    /// Drop this connection (shut the socket down so the backend sees it go at once) and
    /// connect anew with fresh guest memory and rings.
    pub fn reconnect(&mut self, socket: &Path, num_queues: usize, queue_size: u16) {
        // SAFETY: shutdown(2) on the frontend's live socket; the fd stays open until `self.fe`
        // is replaced below.
        unsafe { libc::shutdown(self.fe.as_raw_fd(), libc::SHUT_RDWR) };
        *self = TestFrontend::connect(socket, num_queues, queue_size);
    }

    fn new_queue(&self, index: usize, size: u16) -> TestQueue {
        let base = index as u64 * QUEUE_AREA;
        TestQueue {
            index,
            size,
            desc: base,
            avail: base + 0x4000,
            used: base + 0x8000,
            avail_idx: 0,
            used_seen: 0,
            kick: EventFd::new(EFD_NONBLOCK).expect("kick eventfd"),
            call: EventFd::new(EFD_NONBLOCK).expect("call eventfd"),
        }
    }

    fn host(&self, gpa: u64) -> u64 {
        self.mem.get_host_address(GuestAddress(gpa)).expect("ring inside guest memory") as u64
    }

    /// SET_VRING_NUM/ADDR/BASE/CALL/KICK/ENABLE for queue `i`, starting at its current
    /// `avail_idx` (zeroing its rings first when that is 0).
    pub fn start_queue(&mut self, i: usize) {
        let base = self.queues[i].avail_idx;
        if base == 0 {
            let desc = self.queues[i].desc;
            self.mem.write_slice(&vec![0u8; QUEUE_AREA as usize], GuestAddress(desc)).expect("clear rings");
        }
        self.start_queue_at(i, base);
    }

    /// SET_VRING_NUM/ADDR/BASE/CALL/KICK/ENABLE for queue `i` with `base` as the next avail
    /// index, the rings left as they are.
    pub fn start_queue_at(&mut self, i: usize, base: u16) {
        let (size, desc, avail, used) = {
            let q = &self.queues[i];
            (q.size, q.desc, q.avail, q.used)
        };
        let addr = VringConfigData {
            queue_max_size: size,
            queue_size: size,
            flags: 0,
            desc_table_addr: self.host(desc),
            used_ring_addr: self.host(used),
            avail_ring_addr: self.host(avail),
            log_addr: None,
        };
        self.fe.set_vring_num(i, size).expect("SET_VRING_NUM");
        self.fe.set_vring_addr(i, &addr).expect("SET_VRING_ADDR");
        self.fe.set_vring_base(i, base).expect("SET_VRING_BASE");
        self.fe.set_vring_call(i, &self.queues[i].call).expect("SET_VRING_CALL");
        self.fe.set_vring_kick(i, &self.queues[i].kick).expect("SET_VRING_KICK");
        self.fe.set_vring_enable(i, true).expect("SET_VRING_ENABLE");
    }

    /// Stop queue `i` (SET_VRING_ENABLE 0, GET_VRING_BASE); returns the backend's next avail index.
    pub fn stop_queue(&mut self, i: usize) -> u32 {
        self.fe.set_vring_enable(i, false).expect("SET_VRING_ENABLE");
        self.fe.get_vring_base(i).expect("GET_VRING_BASE")
    }

    /// The device's configuration space (first 60 bytes).
    pub fn config(&mut self) -> Vec<u8> {
        let buf = [0u8; 60];
        self.fe.get_config(0, 60, VhostUserConfigFlags::empty(), &buf).expect("GET_CONFIG").1
    }

    /// A guest buffer of `len` bytes (16-byte aligned), filled with `fill`.
    pub fn alloc(&mut self, len: usize, fill: u8) -> u64 {
        let at = self.next_data;
        let end = at + len as u64;
        assert!(end <= MEM_SIZE, "test guest memory exhausted");
        self.next_data = (end + 15) & !15;
        self.mem.write_slice(&vec![fill; len], GuestAddress(at)).expect("fill buffer");
        at
    }

    /// Forget every data buffer handed out (only between requests).
    pub fn reset_data(&mut self) {
        self.next_data = DATA_START;
    }

    /// A request header (type, reserved, sector) in a fresh buffer.
    pub fn header(&mut self, kind: u32, sector: u64) -> u64 {
        let at = self.alloc(16, 0);
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&h, GuestAddress(at)).expect("write header");
        at
    }

    /// A buffer holding `data`.
    pub fn data(&mut self, data: &[u8]) -> u64 {
        let at = self.alloc(data.len(), 0);
        self.mem.write_slice(data, GuestAddress(at)).expect("write data");
        at
    }

    /// A status byte preset to [`S_UNTOUCHED`].
    pub fn status_buf(&mut self) -> u64 {
        self.alloc(1, S_UNTOUCHED)
    }

    /// Read `len` bytes of guest memory at `at`.
    pub fn read(&self, at: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(at)).expect("read guest memory");
        v
    }

    /// One byte of guest memory.
    pub fn byte(&self, at: u64) -> u8 {
        self.read(at, 1)[0]
    }

    /// Write descriptor `index` of the table at guest address `table`.
    pub fn put_desc(&self, table: u64, index: u16, d: Desc) {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&d.addr.to_le_bytes());
        b[8..12].copy_from_slice(&d.len.to_le_bytes());
        b[12..14].copy_from_slice(&d.flags.to_le_bytes());
        b[14..16].copy_from_slice(&d.next.to_le_bytes());
        self.mem.write_slice(&b, GuestAddress(table + u64::from(index) * 16)).expect("write descriptor");
    }

    /// Write `descs` into queue `q`'s table from index `first`, linking each to the next one
    /// (F_NEXT added to all but the last); returns the head index.
    pub fn put_chain(&self, q: usize, first: u16, descs: &[Desc]) -> u16 {
        let table = self.queues[q].desc;
        let size = self.queues[q].size;
        for (i, d) in descs.iter().enumerate() {
            let index = (first + i as u16) % size;
            let mut d = *d;
            if i + 1 < descs.len() {
                d.flags |= F_NEXT;
                d.next = (index + 1) % size;
            }
            self.put_desc(table, index, d);
        }
        first
    }

    /// Put `head` in queue `q`'s avail ring and publish it (does not kick).
    pub fn publish(&mut self, q: usize, head: u16) {
        self.stage(q, head);
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        self.set_avail_idx(q, self.queues[q].avail_idx);
    }

    /// Put `head` in queue `q`'s avail ring without publishing it: the device sees it at the
    /// next [`TestFrontend::publish`] or [`TestFrontend::set_avail_idx`].
    pub fn stage(&mut self, q: usize, head: u16) {
        let (avail, size, idx) = (self.queues[q].avail, self.queues[q].size, self.queues[q].avail_idx);
        let slot = avail + 4 + u64::from(idx % size) * 2;
        self.mem.write_obj(head, GuestAddress(slot)).expect("avail entry");
        self.queues[q].avail_idx = idx.wrapping_add(1);
    }

    /// Write queue `q`'s avail index as is (a hostile guest may write anything).
    pub fn set_avail_idx(&mut self, q: usize, idx: u16) {
        self.queues[q].avail_idx = idx;
        self.mem.write_obj(idx, GuestAddress(self.queues[q].avail + 2)).expect("avail idx");
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    }

    /// Kick queue `q`.
    pub fn kick(&self, q: usize) {
        self.queues[q].kick.write(1).expect("kick");
    }

    /// The used ring's flags of queue `q` (see [`USED_F_NO_NOTIFY`]).
    pub fn used_flags(&self, q: usize) -> u16 {
        self.mem.read_obj::<u16>(GuestAddress(self.queues[q].used)).expect("used flags")
    }

    /// With EVENT_IDX: the avail index at which the device asks to be kicked next (queue `q`).
    pub fn avail_event(&self, q: usize) -> u16 {
        let at = self.queues[q].used + 4 + 8 * u64::from(self.queues[q].size);
        self.mem.read_obj::<u16>(GuestAddress(at)).expect("avail event")
    }

    /// The avail index the test published last on queue `q`.
    pub fn avail_idx(&self, q: usize) -> u16 {
        self.queues[q].avail_idx
    }

    /// The device's used index of queue `q`.
    pub fn used_idx(&self, q: usize) -> u16 {
        self.mem.read_obj::<u16>(GuestAddress(self.queues[q].used + 2)).expect("used idx")
    }

    /// Wait up to `timeout` for the next used entry of queue `q`: (id, len).
    pub fn next_used(&mut self, q: usize, timeout: Duration) -> Option<(u32, u32)> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.used_idx(q) != self.queues[q].used_seen {
                let (used, size, seen) = (self.queues[q].used, self.queues[q].size, self.queues[q].used_seen);
                let at = used + 4 + u64::from(seen % size) * 8;
                let id = self.mem.read_obj::<u32>(GuestAddress(at)).expect("used id");
                let len = self.mem.read_obj::<u32>(GuestAddress(at + 4)).expect("used len");
                self.queues[q].used_seen = seen.wrapping_add(1);
                return Some((id, len));
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The next used entry of queue `q` if there is one now (no waiting: for benchmarks that
    /// spin).
    pub fn next_used_spin(&mut self, q: usize) -> Option<(u32, u32)> {
        if self.used_idx(q) == self.queues[q].used_seen {
            std::hint::spin_loop();
            return None;
        }
        std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
        let (used, size, seen) = (self.queues[q].used, self.queues[q].size, self.queues[q].used_seen);
        let at = used + 4 + u64::from(seen % size) * 8;
        let id = self.mem.read_obj::<u32>(GuestAddress(at)).expect("used id");
        let len = self.mem.read_obj::<u32>(GuestAddress(at + 4)).expect("used len");
        self.queues[q].used_seen = seen.wrapping_add(1);
        Some((id, len))
    }

    /// Publish `head` on queue `q`, kick, and wait (5 s) for its used entry.
    pub fn submit(&mut self, q: usize, head: u16) -> (u32, u32) {
        self.publish(q, head);
        self.kick(q);
        self.next_used(q, Duration::from_secs(5)).expect("the device answered within 5 s")
    }

    /// A well-formed request on queue `q` (descriptors 0..): header, an optional device-readable
    /// payload, `in_len` device-writable bytes, status. Returns (status, used len, data read).
    pub fn request(&mut self, q: usize, kind: u32, sector: u64, out: &[u8], in_len: usize) -> (u8, u32, Vec<u8>) {
        self.reset_data();
        let hdr = self.header(kind, sector);
        let mut descs = vec![Desc { addr: hdr, len: 16, flags: 0, next: 0 }];
        if !out.is_empty() {
            let at = self.data(out);
            descs.push(Desc { addr: at, len: out.len() as u32, flags: 0, next: 0 });
        }
        let in_at = self.alloc(in_len, 0);
        if in_len > 0 {
            descs.push(Desc { addr: in_at, len: in_len as u32, flags: F_WRITE, next: 0 });
        }
        let st = self.status_buf();
        descs.push(Desc { addr: st, len: 1, flags: F_WRITE, next: 0 });
        let head = self.put_chain(q, 0, &descs);
        let (id, len) = self.submit(q, head);
        assert_eq!(id, u32::from(head), "used entry for another head");
        (self.byte(st), len, self.read(in_at, in_len))
    }

    /// Write `data` at `sector` on queue `q`; returns the status.
    pub fn write(&mut self, q: usize, sector: u64, data: &[u8]) -> u8 {
        self.request(q, T_OUT, sector, data, 0).0
    }

    /// Read `len` bytes at `sector` on queue `q`: (status, data).
    pub fn read_sectors(&mut self, q: usize, sector: u64, len: usize) -> (u8, Vec<u8>) {
        let (st, _, data) = self.request(q, T_IN, sector, &[], len);
        (st, data)
    }
}
