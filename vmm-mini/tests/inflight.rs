//! The in-flight region across a reconnect, against a scripted backend (the vhost crate's
//! backend message layer) that offers INFLIGHT_SHMFD, as strata's daemon will once its protocol
//! layer lands: the first start asks the backend for the region (GET_INFLIGHT_FD) and hands it
//! back (SET_INFLIGHT_FD); after the backend is lost, the new backend gets that same region
//! (its bytes, not a new one) before SET_FEATURES, and each queue's base is the used index in
//! guest memory.

use std::fs::File;
use std::io::Write;
use std::os::fd::FromRawFd;
use std::os::unix::fs::FileExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags, VhostUserInflight, VhostUserLog,
    VhostUserMemoryRegion, VhostUserProtocolFeatures, VhostUserShMemConfig, VhostUserSharedMsg,
    VhostUserSingleMemoryRegion, VhostUserVringAddrFlags, VhostUserVringState,
};
use vhost::vhost_user::{
    BackendReqHandler, Error as VuError, GpuBackend, Result as VuResult, VhostUserBackendReqHandlerMut,
};
use vhost::VhostUserMemoryRegionBase;
use vm_memory::{Bytes, GuestAddress};
use vmm_mini::blk_device::BlkDevice;
use vmm_mini::disk_spec::DiskSpec;
use vmm_mini::memory::create_guest_memory;
use vmm_mini::vhost_frontend::BlkFrontend;
use vmm_mini::virtio_mmio::{reg, status};

const REGION_LEN: u64 = 4096;
const USED: u64 = 0x22000;

/// What a scripted backend was told, in order.
#[derive(Debug, Default)]
struct Seen {
    /// Every message handled, by name.
    log: Vec<&'static str>,
    /// GET_INFLIGHT_FD requests (num_queues, queue_size).
    inflight_asked: Vec<(u16, u16)>,
    /// The first 16 bytes of each region handed over with SET_INFLIGHT_FD.
    inflight_given: Vec<Vec<u8>>,
    /// SET_VRING_BASE (queue, base).
    bases: Vec<(u32, u32)>,
}

struct Scripted {
    seen: Arc<Mutex<Seen>>,
    /// The byte a region this backend makes is filled with.
    marker: u8,
}

fn not_here() -> VuError {
    VuError::InvalidOperation("not used by this test")
}

impl Scripted {
    fn note(&self, what: &'static str) {
        self.seen.lock().unwrap().log.push(what);
    }
}

impl VhostUserBackendReqHandlerMut for Scripted {
    fn set_owner(&mut self) -> VuResult<()> {
        Ok(())
    }
    fn reset_owner(&mut self) -> VuResult<()> {
        Ok(())
    }
    fn reset_device(&mut self) -> VuResult<()> {
        Ok(())
    }
    fn get_features(&mut self) -> VuResult<u64> {
        Ok((1 << 32) | (1 << 30)) // VERSION_1, VHOST_USER_F_PROTOCOL_FEATURES
    }
    fn set_features(&mut self, _features: u64) -> VuResult<()> {
        self.note("SET_FEATURES");
        Ok(())
    }
    fn set_mem_table(
        &mut self,
        _ctx: &[VhostUserMemoryRegion],
        _files: Vec<File>,
        _postcopy: Option<bool>,
    ) -> VuResult<Option<Vec<VhostUserMemoryRegionBase>>> {
        self.note("SET_MEM_TABLE");
        Ok(None)
    }
    fn set_vring_num(&mut self, _index: u32, _num: u32) -> VuResult<()> {
        Ok(())
    }
    fn set_vring_addr(
        &mut self,
        _index: u32,
        _flags: VhostUserVringAddrFlags,
        _descriptor: u64,
        _used: u64,
        _available: u64,
        _log: u64,
    ) -> VuResult<()> {
        Ok(())
    }
    fn set_vring_base(&mut self, index: u32, base: u32) -> VuResult<()> {
        self.note("SET_VRING_BASE");
        self.seen.lock().unwrap().bases.push((index, base));
        Ok(())
    }
    fn get_vring_base(&mut self, index: u32) -> VuResult<VhostUserVringState> {
        Ok(VhostUserVringState::new(index, 0))
    }
    fn set_vring_kick(&mut self, _index: u8, _fd: Option<File>) -> VuResult<()> {
        Ok(())
    }
    fn set_vring_call(&mut self, _index: u8, _fd: Option<File>) -> VuResult<()> {
        Ok(())
    }
    fn set_vring_err(&mut self, _index: u8, _fd: Option<File>) -> VuResult<()> {
        Ok(())
    }
    fn get_protocol_features(&mut self) -> VuResult<VhostUserProtocolFeatures> {
        Ok(VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::INFLIGHT_SHMFD)
    }
    fn set_protocol_features(&mut self, _features: u64) -> VuResult<()> {
        Ok(())
    }
    fn get_queue_num(&mut self) -> VuResult<u64> {
        Ok(1)
    }
    fn set_vring_enable(&mut self, _index: u32, _enable: bool) -> VuResult<()> {
        Ok(())
    }
    fn get_config(&mut self, _offset: u32, size: u32, _flags: VhostUserConfigFlags) -> VuResult<Vec<u8>> {
        let mut c = vec![0u8; size as usize];
        c[..8].copy_from_slice(&2048u64.to_le_bytes());
        Ok(c)
    }
    fn set_config(&mut self, _offset: u32, _buf: &[u8], _flags: VhostUserConfigFlags) -> VuResult<()> {
        Err(not_here())
    }
    fn set_gpu_socket(&mut self, _gpu_backend: GpuBackend) -> VuResult<()> {
        Err(not_here())
    }
    fn get_shared_object(&mut self, _uuid: VhostUserSharedMsg) -> VuResult<File> {
        Err(not_here())
    }
    fn get_inflight_fd(&mut self, inflight: &VhostUserInflight) -> VuResult<(VhostUserInflight, File)> {
        self.note("GET_INFLIGHT_FD");
        self.seen.lock().unwrap().inflight_asked.push((inflight.num_queues, inflight.queue_size));
        // SAFETY: memfd_create with a NUL-terminated name; the fd is owned by the File below.
        let fd = unsafe { libc::memfd_create(c"inflight".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0, "memfd_create");
        // SAFETY: `fd` is a fresh descriptor nothing else owns.
        let mut f = unsafe { File::from_raw_fd(fd) };
        f.set_len(REGION_LEN).unwrap();
        f.write_all(&[self.marker; 16]).unwrap();
        let info = VhostUserInflight {
            mmap_size: REGION_LEN,
            mmap_offset: 0,
            num_queues: inflight.num_queues,
            queue_size: inflight.queue_size,
        };
        Ok((info, f))
    }
    fn set_inflight_fd(&mut self, inflight: &VhostUserInflight, file: File) -> VuResult<()> {
        self.note("SET_INFLIGHT_FD");
        assert_eq!(inflight.mmap_size, REGION_LEN);
        let mut head = vec![0u8; 16];
        file.read_exact_at(&mut head, 0).unwrap();
        self.seen.lock().unwrap().inflight_given.push(head);
        Ok(())
    }
    fn get_max_mem_slots(&mut self) -> VuResult<u64> {
        Ok(8)
    }
    fn add_mem_region(
        &mut self,
        _region: &VhostUserSingleMemoryRegion,
        _fd: File,
        _postcopy: Option<bool>,
    ) -> VuResult<Option<VhostUserMemoryRegionBase>> {
        Err(not_here())
    }
    fn remove_mem_region(&mut self, _region: &VhostUserSingleMemoryRegion) -> VuResult<()> {
        Err(not_here())
    }
    fn set_device_state_fd(
        &mut self,
        _direction: VhostTransferStateDirection,
        _phase: VhostTransferStatePhase,
        _fd: File,
    ) -> VuResult<Option<File>> {
        Err(not_here())
    }
    fn check_device_state(&mut self) -> VuResult<()> {
        Err(not_here())
    }
    fn get_shmem_config(&mut self) -> VuResult<VhostUserShMemConfig> {
        Err(not_here())
    }
    fn set_log_base(&mut self, _log: &VhostUserLog, _file: File) -> VuResult<()> {
        Err(not_here())
    }
}

/// A scripted backend (regions filled with `marker`) for the next connection to `listener`:
/// what it saw, the connection (once made: shut it down to make the backend "die") and its
/// thread.
type Served = (Arc<Mutex<Seen>>, Receiver<UnixStream>, JoinHandle<()>);

fn serve_one(listener: &UnixListener, marker: u8) -> Served {
    let listener = listener.try_clone().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (tx, rx) = std::sync::mpsc::channel();
    let backend = Scripted { seen: seen.clone(), marker };
    let thread = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        tx.send(stream.try_clone().unwrap()).unwrap();
        let mut h = BackendReqHandler::from_stream(stream, Arc::new(Mutex::new(backend)));
        while h.handle_request().is_ok() {}
    });
    (seen, rx, thread)
}

fn connection(rx: &Receiver<UnixStream>) -> UnixStream {
    rx.recv_timeout(Duration::from_secs(10)).expect("the frontend connected")
}

/// Wait (up to 10 s) until the backend handled a SET_VRING_BASE: the messages before it carry no
/// reply (no REPLY_ACK here), so the frontend does not wait for them.
fn settled(seen: &Mutex<Seen>) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while seen.lock().unwrap().bases.is_empty() {
        assert!(std::time::Instant::now() < deadline, "the backend never got SET_VRING_BASE");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn write_reg(dev: &mut BlkDevice, offset: u64, value: u32) {
    dev.write(offset, &value.to_le_bytes()).expect("register write");
}

#[test]
fn the_in_flight_region_of_the_first_backend_goes_to_the_next_one() {
    let dir = std::env::temp_dir().join(format!("vmm-mini-inflight-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let socket: PathBuf = dir.join("b.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let mem = create_guest_memory(4 << 20).unwrap();
    let spec = DiskSpec {
        socket: socket.clone(),
        num_queues: 1,
        read_only: false,
        reconnect: Some(Duration::from_millis(20)),
    };

    // The first backend: negotiation, then the driver starts the queue.
    let (seen1, rx1, thread1) = serve_one(&listener, 0xab);
    let mut dev = BlkDevice::new(&spec, mem.clone(), Duration::from_secs(10)).expect("connect");
    let stream1 = connection(&rx1);
    write_reg(&mut dev, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    write_reg(&mut dev, reg::DRIVER_FEATURES_SEL, 1);
    write_reg(&mut dev, reg::DRIVER_FEATURES, 1); // VERSION_1
    write_reg(&mut dev, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK);
    write_reg(&mut dev, reg::QUEUE_SEL, 0);
    write_reg(&mut dev, reg::QUEUE_NUM, 8);
    write_reg(&mut dev, reg::QUEUE_DESC_LOW, 0x20000);
    write_reg(&mut dev, reg::QUEUE_DRIVER_LOW, 0x21000);
    write_reg(&mut dev, reg::QUEUE_DEVICE_LOW, USED as u32);
    write_reg(&mut dev, reg::QUEUE_READY, 1);
    let all = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;
    write_reg(&mut dev, reg::STATUS, all);
    settled(&seen1);
    {
        let s = seen1.lock().unwrap();
        assert_eq!(s.inflight_asked, vec![(1, 8)], "GET_INFLIGHT_FD once, for the queues started");
        assert_eq!(s.inflight_given, vec![vec![0xab; 16]], "the region handed back");
        assert_eq!(s.bases, vec![(0, 0)]);
        let order: Vec<_> = s.log.iter().copied().filter(|m| *m != "SET_VRING_BASE").collect();
        assert_eq!(order, ["GET_INFLIGHT_FD", "SET_INFLIGHT_FD", "SET_FEATURES", "SET_MEM_TABLE"]);
    }

    // The guest's backend completed 5 requests; then it dies.
    mem.write_obj(5u16.to_le(), GuestAddress(USED + 2)).unwrap();
    stream1.shutdown(std::net::Shutdown::Both).unwrap();
    thread1.join().unwrap();

    // A new backend (whose own regions would be 0xcd): it gets the first region, not a new one.
    let (seen2, rx2, thread2) = serve_one(&listener, 0xcd);
    let fresh = BlkFrontend::connect(&socket, 1, Duration::from_secs(10), true).expect("reconnect");
    let stream2 = connection(&rx2);
    assert!(dev.reconnect(fresh).expect("take the new backend"), "the in-flight region was not handed over");
    settled(&seen2);
    {
        let s = seen2.lock().unwrap();
        assert!(s.inflight_asked.is_empty(), "a reconnect asked for a new region");
        assert_eq!(s.inflight_given, vec![vec![0xab; 16]], "the first backend's region, bytes and all");
        assert_eq!(s.bases, vec![(0, 5)], "the queue restarts at the used index");
        let order: Vec<_> = s.log.iter().copied().filter(|m| *m != "SET_VRING_BASE").collect();
        assert_eq!(order, ["SET_INFLIGHT_FD", "SET_FEATURES", "SET_MEM_TABLE"]);
    }
    stream2.shutdown(std::net::Shutdown::Both).unwrap();
    thread2.join().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
