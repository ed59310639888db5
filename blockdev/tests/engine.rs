//! io engine and device tests on real files: the acceptance list of the foundation issue.

use std::sync::Arc;

use blockdev::{BlockDev, EngineConfig, ErrorKind, IoBufs, IoCtx, IoTag, MemDisk, OpenOptions, RawFile, SharedBuf};

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

fn tmpfile(size: u64) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("disk.img");
    let f = std::fs::File::create(&path).expect("create");
    f.set_len(size).expect("set_len");
    (dir, path)
}

#[test]
fn vectored_io_across_iovec_boundaries() {
    let (_d, path) = tmpfile(1 << 20);
    let dev = RawFile::open(&path, OpenOptions::default()).unwrap();
    let io = IoCtx::new().unwrap();
    let data = pattern(12288, 7);
    // Three uneven segments: 1000 + 5000 + 6288 bytes.
    let mut a = SharedBuf::from_slice(&data[..1000]);
    let mut b = SharedBuf::from_slice(&data[1000..6000]);
    let mut c = SharedBuf::from_slice(&data[6000..]);
    let mut bufs = a.io();
    bufs.append(b.io());
    bufs.append(c.io());
    io.block_on(dev.write(&io, 4096, bufs, false, IoTag::DATA)).unwrap();
    // Read back into different boundaries.
    let mut x = SharedBuf::new(777 * 4);
    let mut y = SharedBuf::new(12288 - 777 * 4);
    let mut rb = x.io();
    rb.append(y.io());
    io.block_on(dev.read(&io, 4096, rb, IoTag::DATA)).unwrap();
    let mut got = x.bytes().to_vec();
    got.extend_from_slice(y.bytes());
    assert_eq!(got, data);
    assert_eq!(&std::fs::read(&path).unwrap()[4096..4096 + 12288], &data[..]);
}

#[test]
fn direct_io_with_unaligned_buffers_goes_through_the_pool() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("direct.img");
    std::fs::File::create(&path).unwrap().set_len(1 << 20).unwrap();
    let dev = match RawFile::open(&path, OpenOptions { direct: true, ..Default::default() }) {
        Ok(d) => d,
        Err(e) if e.kind() == ErrorKind::Unsupported => {
            eprintln!("SKIPPED direct_io test: {e}");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let io = IoCtx::new().unwrap();
    let data = pattern(8192, 3);
    // A buffer at an odd address, like a guest's.
    let mut backing = SharedBuf::new(8192 + 1);
    backing.bytes_mut()[1..].copy_from_slice(&data);
    let bufs = backing.io_range(1, 8192);
    assert!(!bufs.is_aligned(512));
    io.block_on(dev.write(&io, 8192, bufs, false, IoTag::DATA)).unwrap();
    let mut back = SharedBuf::new(8192 + 3);
    io.block_on(dev.read(&io, 8192, back.io_range(3, 8192), IoTag::DATA)).unwrap();
    assert_eq!(&back.bytes()[3..], &data[..]);
    // Misaligned offsets are refused.
    let mut small = SharedBuf::new(512);
    let err = io.block_on(dev.read(&io, 100, small.io(), IoTag::DATA)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
}

#[test]
fn sixty_four_requests_in_flight_from_one_thread() {
    let (_d, path) = tmpfile(64 * 4096);
    let dev: Arc<dyn BlockDev> = Arc::new(RawFile::open(&path, OpenOptions::default()).unwrap());
    let io = IoCtx::new().unwrap();
    let mut handles = Vec::new();
    for i in 0..64u64 {
        let (dev, io2) = (dev.clone(), io.clone());
        handles.push(io.spawn(async move {
            let mut b = SharedBuf::from_slice(&pattern(4096, i as u8));
            dev.write(&io2, i * 4096, b.io(), false, IoTag::DATA).await
        }));
    }
    // All 64 are queued before the first completes: one submit carries them.
    io.block_on(async {
        for h in handles {
            h.await.unwrap();
        }
    });
    let mut reads = Vec::new();
    for i in 0..64u64 {
        let (dev, io2) = (dev.clone(), io.clone());
        reads.push(io.spawn(async move {
            let mut b = SharedBuf::new(4096);
            dev.read(&io2, i * 4096, b.io(), IoTag::DATA).await.unwrap();
            b.bytes() == pattern(4096, i as u8).as_slice()
        }));
    }
    let ok = io.block_on(async {
        let mut all = true;
        for r in reads {
            all &= r.await;
        }
        all
    });
    assert!(ok);
    assert_eq!(io.in_flight(), 0);
}

#[test]
fn two_threads_each_with_their_own_ring_on_one_device() {
    let (_d, path) = tmpfile(2 << 20);
    let dev: Arc<dyn BlockDev> = Arc::new(RawFile::open(&path, OpenOptions::default()).unwrap());
    let threads: Vec<_> = (0..2u64)
        .map(|t| {
            let dev = dev.clone();
            std::thread::spawn(move || {
                let io = IoCtx::new().unwrap();
                for i in 0..64u64 {
                    let off = (t << 20) + i * 8192;
                    let mut b = SharedBuf::from_slice(&pattern(8192, (t * 64 + i) as u8));
                    io.block_on(dev.write(&io, off, b.io(), false, IoTag::DATA)).unwrap();
                }
                io.block_on(dev.flush(&io, IoTag::DATA)).unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let file = std::fs::read(&path).unwrap();
    for t in 0..2u64 {
        for i in 0..64u64 {
            let off = ((t << 20) + i * 8192) as usize;
            assert_eq!(&file[off..off + 8192], &pattern(8192, (t * 64 + i) as u8)[..]);
        }
    }
}

#[test]
fn discard_and_write_zeroes_read_back_zeros() {
    let (_d, path) = tmpfile(1 << 20);
    let raw: Arc<dyn BlockDev> = Arc::new(RawFile::open(&path, OpenOptions::default()).unwrap());
    let mem: Arc<dyn BlockDev> = Arc::new(MemDisk::new(1 << 20).unwrap());
    let io = IoCtx::new().unwrap();
    for dev in [raw, mem] {
        let mut b = SharedBuf::from_slice(&vec![0xAB; 256 << 10]);
        io.block_on(dev.write(&io, 0, b.io(), false, IoTag::DATA)).unwrap();
        io.block_on(dev.discard(&io, 0, 64 << 10, IoTag::DATA)).unwrap();
        io.block_on(dev.write_zeroes(&io, 64 << 10, 64 << 10, false, IoTag::DATA)).unwrap();
        io.block_on(dev.write_zeroes(&io, 128 << 10, 64 << 10, true, IoTag::DATA)).unwrap();
        let mut r = SharedBuf::new(256 << 10);
        io.block_on(dev.read(&io, 0, r.io(), IoTag::DATA)).unwrap();
        assert!(r.bytes()[..192 << 10].iter().all(|&x| x == 0), "{}", dev.describe());
        assert!(r.bytes()[192 << 10..].iter().all(|&x| x == 0xAB), "{}", dev.describe());
    }
}

#[test]
fn flush_completes_after_the_writes_before_it() {
    let (_d, path) = tmpfile(1 << 20);
    let dev: Arc<dyn BlockDev> = Arc::new(RawFile::open(&path, OpenOptions::default()).unwrap());
    let io = IoCtx::new().unwrap();
    let order = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let mut writes = Vec::new();
    for i in 0..16u64 {
        let (dev, io2, order) = (dev.clone(), io.clone(), order.clone());
        writes.push(io.spawn(async move {
            let mut b = SharedBuf::from_slice(&pattern(65536, i as u8));
            dev.write(&io2, i * 65536, b.io(), false, IoTag::DATA).await.unwrap();
            order.borrow_mut().push(format!("w{i}"));
        }));
    }
    // The flush is issued once every write before it has completed (the contract the server
    // keeps for the guest), and it must itself succeed.
    io.block_on(async {
        for w in writes {
            w.await;
        }
        dev.flush(&io, IoTag::DATA).await.unwrap();
        order.borrow_mut().push("flush".into());
    });
    let order = order.borrow();
    assert_eq!(order.len(), 17);
    assert_eq!(order.last().unwrap(), "flush");
}

#[test]
fn second_writable_open_of_a_locked_file_is_refused() {
    let (_d, path) = tmpfile(1 << 20);
    let first = RawFile::open(&path, OpenOptions::default()).unwrap();
    let start = std::time::Instant::now();
    let err = RawFile::open(&path, OpenOptions::default()).err().expect("second open must fail");
    assert_eq!(err.kind(), ErrorKind::Locked);
    assert!(err.to_string().contains("disk.img"), "{err}");
    assert!(start.elapsed() >= std::time::Duration::from_millis(900), "retried for about a second");
    // Read-only opens conflict with the writer too.
    assert_eq!(
        RawFile::open(&path, OpenOptions { read_only: true, ..Default::default() }).err().unwrap().kind(),
        ErrorKind::Locked
    );
    // Once the writer (and its ring registration) is gone, the file opens again.
    let io = IoCtx::new().unwrap();
    let mut b = SharedBuf::new(512);
    io.block_on(first.read(&io, 0, b.io(), IoTag::DATA)).unwrap();
    drop(first);
    let again = RawFile::open(&path, OpenOptions::default()).expect("lock released after drop");
    drop(again);
    // Two readers share.
    let r1 = RawFile::open(&path, OpenOptions { read_only: true, ..Default::default() }).unwrap();
    let r2 = RawFile::open(&path, OpenOptions { read_only: true, ..Default::default() }).unwrap();
    let mut b = SharedBuf::new(512);
    let err = io.block_on(r1.write(&io, 0, b.io(), false, IoTag::DATA)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ReadOnly);
    drop((r1, r2));
}

#[test]
fn reads_past_the_end_are_refused() {
    let (_d, path) = tmpfile(8192);
    let dev = RawFile::open(&path, OpenOptions::default()).unwrap();
    let io = IoCtx::new().unwrap();
    let mut b = SharedBuf::new(1024);
    let err = io.block_on(dev.read(&io, 7680, b.io(), IoTag::DATA)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::OutOfRange);
}

#[test]
fn dropped_request_keeps_its_buffer_until_completion() {
    let (_d, path) = tmpfile(1 << 20);
    let dev = RawFile::open(&path, OpenOptions::default()).unwrap();
    let io = IoCtx::new().unwrap();
    let mut b = SharedBuf::new(1 << 20);
    {
        let mut fut = dev.read(&io, 0, b.io(), IoTag::DATA);
        // Poll once so it is submitted, then drop it.
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let _ = fut.as_mut().poll(&mut cx);
        io.submit();
    }
    // The engine still holds the buffer until the completion arrives.
    io.block_on(async {});
    while b.in_flight() {
        io.block_on(dev.flush(&io, IoTag::DATA)).unwrap();
    }
    let _ = b.bytes();
}

#[test]
fn growable_file_extends_and_reads_zeros_past_end() {
    let (_d, path) = tmpfile(0);
    let dev = RawFile::open(&path, OpenOptions { growable: true, ..Default::default() }).unwrap();
    let io = IoCtx::new().unwrap();
    let mut b = SharedBuf::from_slice(&[7u8; 100]);
    io.block_on(dev.write(&io, 1000, b.io(), false, IoTag::meta("test.grow"))).unwrap();
    assert_eq!(dev.size(), 1100);
    let mut r = SharedBuf::new(300);
    io.block_on(dev.read(&io, 1000, r.io(), IoTag::DATA)).unwrap();
    assert_eq!(&r.bytes()[..100], &[7u8; 100]);
    assert!(r.bytes()[100..].iter().all(|&x| x == 0));
}

#[test]
fn refresh_size_takes_growth_from_another_handle_and_refuses_a_shrink() {
    let (_d, path) = tmpfile(1 << 20);
    let dev = RawFile::open(&path, OpenOptions::default()).unwrap();
    let io = IoCtx::new().unwrap();
    let mut b = SharedBuf::from_slice(&[3u8; 4096]);
    let past_end = io.block_on(dev.write(&io, 1 << 20, b.io(), false, IoTag::DATA)).unwrap_err();
    assert_eq!(past_end.kind(), ErrorKind::OutOfRange);
    // Another process (here another handle, as `truncate -s` would) extends the file.
    let other = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    other.set_len((2 << 20) + 100).unwrap();
    assert_eq!(dev.info().size, 1 << 20, "the size is only read again when asked");
    // Rounded down to the logical block size.
    assert_eq!(dev.refresh_size().unwrap(), 2 << 20);
    assert_eq!(dev.info().size, 2 << 20);
    io.block_on(dev.write(&io, 1 << 20, b.io(), false, IoTag::DATA)).unwrap();
    other.set_len(1 << 20).unwrap();
    let e = dev.refresh_size().unwrap_err();
    assert!(e.to_string().contains("disk.img") && e.to_string().contains("cannot shrink"), "{e}");
    assert_eq!(dev.info().size, 2 << 20, "a refused shrink keeps the size");
}

#[test]
fn an_iovec_list_of_the_kernel_maximum_plus_one_still_works() {
    let (_d, path) = tmpfile(1 << 20);
    let dev = RawFile::open(&path, OpenOptions::default()).unwrap();
    let io = IoCtx::new().unwrap();
    let mut buf = SharedBuf::from_slice(&pattern(1025 * 512, 9));
    let mut bufs = IoBufs::new();
    for i in 0..1025 {
        bufs.append(buf.io_range(i * 512, 512));
    }
    io.block_on(dev.write(&io, 0, bufs, false, IoTag::DATA)).unwrap();
    drop(buf.io());
    assert_eq!(&std::fs::read(&path).unwrap()[..1025 * 512], buf.bytes());
}

/// An external epoll loop (as the vhost-user worker runs) waits on `completion_fd` and calls
/// `run_once`: every request completes without `block_on`.
#[test]
fn epoll_loop_drives_requests_through_completion_fd() {
    let (_d, path) = tmpfile(1 << 20);
    let dev: Arc<dyn BlockDev> = Arc::new(RawFile::open(&path, OpenOptions::default()).unwrap());
    let io = IoCtx::new().unwrap();
    // SAFETY: epoll_create1 has no memory arguments.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    assert!(ep >= 0);
    let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: 1 };
    // SAFETY: registers a valid fd with a live event struct.
    assert_eq!(unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, io.completion_fd(), &mut ev) }, 0);
    let done = std::rc::Rc::new(std::cell::Cell::new(0));
    for i in 0..32u64 {
        let (dev, io2, done) = (dev.clone(), io.clone(), done.clone());
        io.spawn(async move {
            let mut b = SharedBuf::from_slice(&pattern(4096, i as u8));
            dev.write(&io2, i * 4096, b.io(), false, IoTag::DATA).await.unwrap();
            let mut r = SharedBuf::new(4096);
            dev.read(&io2, i * 4096, r.io(), IoTag::DATA).await.unwrap();
            assert_eq!(r.bytes(), pattern(4096, i as u8).as_slice());
            done.set(done.get() + 1);
        });
    }
    io.run_once();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while done.get() < 32 {
        assert!(std::time::Instant::now() < deadline, "epoll loop stalled at {} of 32", done.get());
        let mut out = [libc::epoll_event { events: 0, u64: 0 }; 4];
        // SAFETY: waits on our epoll fd with a live output array of the stated length.
        unsafe { libc::epoll_wait(ep, out.as_mut_ptr(), 4, 1000) };
        io.run_once();
    }
    // SAFETY: closes the epoll fd we created.
    unsafe { libc::close(ep) };
    assert_eq!(io.live_tasks(), 0);
}

/// With a kernel submission thread (SQPOLL) that went to sleep: operations of a task spawned
/// then (they are queued during the next turn, which completes nothing) are still handed over,
/// the thread woken, and their completions reach the epoll loop.
#[test]
fn epoll_loop_with_a_sleeping_kernel_submission_thread() {
    let (_d, path) = tmpfile(1 << 20);
    let dev: Arc<dyn BlockDev> = Arc::new(RawFile::open(&path, OpenOptions::default()).unwrap());
    let io = IoCtx::with_config(EngineConfig { sq_poll_idle_ms: 1, ..EngineConfig::default() }).unwrap();
    assert!(io.config().sq_polled());
    // SAFETY: epoll_create1 has no memory arguments.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    assert!(ep >= 0);
    let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: 1 };
    // SAFETY: registers a valid fd with a live event struct.
    assert_eq!(unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, io.completion_fd(), &mut ev) }, 0);
    let done = std::rc::Rc::new(std::cell::Cell::new(0));
    for i in 0..8u64 {
        // Idle past the kernel thread's 1 ms: it goes to sleep.
        std::thread::sleep(std::time::Duration::from_millis(5));
        let (dev, io2, finished) = (dev.clone(), io.clone(), done.clone());
        io.spawn(async move {
            let mut b = SharedBuf::from_slice(&pattern(4096, i as u8));
            dev.write(&io2, i * 4096, b.io(), false, IoTag::DATA).await.unwrap();
            let mut r = SharedBuf::new(4096);
            dev.read(&io2, i * 4096, r.io(), IoTag::DATA).await.unwrap();
            assert_eq!(r.bytes(), pattern(4096, i as u8).as_slice());
            finished.set(finished.get() + 1);
        });
        io.run_pending();
        while done.get() <= i as usize {
            let mut out = [libc::epoll_event { events: 0, u64: 0 }; 4];
            // SAFETY: waits on our epoll fd with a live output array of the stated length.
            let n = unsafe { libc::epoll_wait(ep, out.as_mut_ptr(), 4, 3000) };
            assert!(n > 0, "request {i}: nothing signalled in 3 s (an operation never reached the kernel?)");
            io.run_once();
        }
    }
    // SAFETY: closes the epoll fd we created.
    unsafe { libc::close(ep) };
    assert_eq!(io.live_tasks(), 0);
}

/// A task waiting on something another thread completes is woken through the wake eventfd
/// while its thread sleeps in the ring.
#[test]
fn another_thread_wakes_a_sleeping_engine() {
    let io = IoCtx::new().unwrap();
    let flag = Arc::new(std::sync::Mutex::new((false, None::<std::task::Waker>)));
    let f2 = flag.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(100));
        let mut g = f2.lock().unwrap();
        g.0 = true;
        if let Some(w) = g.1.take() {
            w.wake();
        }
    });
    io.block_on(std::future::poll_fn(|cx| {
        let mut g = flag.lock().unwrap();
        if g.0 {
            std::task::Poll::Ready(())
        } else {
            g.1 = Some(cx.waker().clone());
            std::task::Poll::Pending
        }
    }));
    t.join().unwrap();
}

/// A future that another thread completes: ready once `done` is set, its waker stored meanwhile.
type Remote = Arc<std::sync::Mutex<(bool, Option<std::task::Waker>)>>;

fn remote_done(flag: &Remote) -> impl std::future::Future<Output = ()> + 'static {
    let flag = flag.clone();
    std::future::poll_fn(move |cx| {
        let mut g = flag.lock().unwrap();
        if g.0 {
            std::task::Poll::Ready(())
        } else {
            g.1 = Some(cx.waker().clone());
            std::task::Poll::Pending
        }
    })
}

fn complete_remote(flag: &Remote) {
    let mut g = flag.lock().unwrap();
    g.0 = true;
    if let Some(w) = g.1.take() {
        w.wake();
    }
}

/// An epoll-driven engine (as the vhost-user worker makes) signals completions and other
/// threads' wake-ups on the one eventfd: an epoll loop watching only it sees both, each wait
/// ending within the timeout (a lost signal would leave it waiting), and the ring has no poll
/// of its own, so a wake-up's turn completes nothing from the ring.
#[test]
fn an_epoll_driven_engine_signals_completions_and_remote_wake_ups_on_one_eventfd() {
    let (_d, path) = tmpfile(1 << 20);
    let dev: Arc<dyn BlockDev> = Arc::new(RawFile::open(&path, OpenOptions::default()).unwrap());
    let io = IoCtx::with_config(EngineConfig { epoll_driven: true, ..EngineConfig::default() }).unwrap();
    assert_eq!(io.completion_fd(), io.wake_fd());
    // SAFETY: epoll_create1 has no memory arguments.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    assert!(ep >= 0);
    let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: 1 };
    // SAFETY: registers a valid fd with a live event struct.
    assert_eq!(unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, io.completion_fd(), &mut ev) }, 0);
    let wait = |what: &str| {
        let mut out = [libc::epoll_event { events: 0, u64: 0 }; 4];
        // SAFETY: waits on our epoll fd with a live output array of the stated length.
        let n = unsafe { libc::epoll_wait(ep, out.as_mut_ptr(), 4, 3000) };
        assert!(n > 0, "{what}: nothing signalled in 3 s");
    };
    let done = std::rc::Rc::new(std::cell::Cell::new(0));
    // File I/O: completions from the ring.
    for i in 0..16u64 {
        let (dev, io2, done) = (dev.clone(), io.clone(), done.clone());
        io.spawn(async move {
            let mut b = SharedBuf::from_slice(&pattern(4096, i as u8));
            dev.write(&io2, i * 4096, b.io(), false, IoTag::DATA).await.unwrap();
            let mut r = SharedBuf::new(4096);
            dev.read(&io2, i * 4096, r.io(), IoTag::DATA).await.unwrap();
            assert_eq!(r.bytes(), pattern(4096, i as u8).as_slice());
            done.set(done.get() + 1);
        });
    }
    io.run_pending();
    while done.get() < 16 {
        wait("file I/O");
        io.run_once();
    }
    // Wake-ups from another thread, one at a time and in bursts.
    for burst in [1usize, 1, 8, 64] {
        let flags: Vec<Remote> = (0..burst).map(|_| Arc::default()).collect();
        for f in &flags {
            let (fut, done) = (remote_done(f), done.clone());
            io.spawn(async move {
                fut.await;
                done.set(done.get() + 1);
            });
        }
        io.run_pending();
        let before = done.get();
        let waker_flags = flags.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            waker_flags.iter().for_each(complete_remote);
        });
        while done.get() < before + burst {
            wait("a wake-up from another thread");
            assert_eq!(io.run_once(), 0, "no ring completion: the ring keeps no wake poll");
        }
        t.join().unwrap();
    }
    // SAFETY: closes the epoll fd we created.
    unsafe { libc::close(ep) };
    assert_eq!(io.live_tasks(), 0);
}

/// `block_on` on an epoll-driven engine sleeps on the shared eventfd: both file completions
/// and another thread's wake-up end its sleep.
#[test]
fn block_on_an_epoll_driven_engine_wakes_for_completions_and_other_threads() {
    let (_d, path) = tmpfile(1 << 20);
    let dev = RawFile::open(&path, OpenOptions::default()).unwrap();
    let io = IoCtx::with_config(EngineConfig { epoll_driven: true, ..EngineConfig::default() }).unwrap();
    let mut b = SharedBuf::from_slice(&pattern(8192, 3));
    io.block_on(dev.write(&io, 0, b.io(), false, IoTag::DATA)).unwrap();
    let mut r = SharedBuf::new(8192);
    io.block_on(dev.read(&io, 0, r.io(), IoTag::DATA)).unwrap();
    assert_eq!(r.bytes(), pattern(8192, 3).as_slice());
    let flag: Remote = Arc::default();
    let f2 = flag.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(100));
        complete_remote(&f2);
    });
    io.block_on(remote_done(&flag));
    t.join().unwrap();
}

#[test]
fn a_dropped_file_is_unlocked_at_once_while_another_thread_still_has_it_registered() {
    let (_d, path) = tmpfile(1 << 20);
    let dev = RawFile::open(&path, OpenOptions::default()).unwrap();
    let (used_tx, used_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let user = {
        let dev = dev.clone();
        std::thread::spawn(move || {
            // This thread's ring registers the file on first use and keeps the registration
            // until it next runs, which it does not do while it waits below.
            let io = IoCtx::new().unwrap();
            let mut buf = SharedBuf::new(4096);
            io.block_on(dev.read(&io, 0, buf.io(), IoTag::DATA)).unwrap();
            drop(dev);
            used_tx.send(()).unwrap();
            release_rx.recv().unwrap();
        })
    };
    used_rx.recv().unwrap();
    drop(dev);
    // A new open file description (as another process, qemu-img say, would make) gets the write
    // lock at once, although a ring still holds the old description.
    let again = RawFile::open(&path, OpenOptions::default());
    release_tx.send(()).unwrap();
    user.join().unwrap();
    assert!(again.is_ok(), "{:?}", again.err());
}

#[test]
fn reads_leave_the_access_time_alone() {
    // A disk opened by its owner is opened O_NOATIME. An access time two days old is one that
    // relatime would bring up to date on the next read; it must still be there afterwards.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("disk.img");
    std::fs::write(&path, pattern(1 << 16, 3)).unwrap();
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(2 * 86_400);
    let f = std::fs::File::options().write(true).open(&path).unwrap();
    f.set_times(std::fs::FileTimes::new().set_accessed(old)).unwrap();
    drop(f);
    let atime = || std::fs::metadata(&path).unwrap().accessed().unwrap();
    let before = atime();

    let dev = RawFile::open(&path, OpenOptions::default()).unwrap();
    let io = IoCtx::new().unwrap();
    let mut buf = SharedBuf::new(4096);
    io.block_on(dev.read(&io, 8192, buf.io(), IoTag::DATA)).unwrap();
    assert_eq!(buf.bytes(), &pattern(1 << 16, 3)[8192..12288]);
    drop(dev);
    assert_eq!(atime(), before, "reading the disk updated the file's access time");

    // The same read through an ordinary open does update it here (so the check above can fail),
    // unless the file system is mounted noatime.
    let mut other = [0u8; 16];
    std::io::Read::read(&mut std::fs::File::open(&path).unwrap(), &mut other).unwrap();
    if atime() == before {
        eprintln!("NOTE: this file system does not update access times; the check above proves nothing here");
    }
}

/// Polls `fut` and records the most operations the engine had in flight after any poll.
struct PeakInFlight<F> {
    fut: std::pin::Pin<Box<F>>,
    io: IoCtx,
    peak: usize,
}

impl<F: std::future::Future> std::future::Future for PeakInFlight<F> {
    type Output = (F::Output, usize);
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        let r = self.fut.as_mut().poll(cx);
        self.peak = self.peak.max(self.io.in_flight());
        r.map(|v| (v, self.peak))
    }
}

/// Read `len` bytes at `off` of a fresh 2 MiB patterned file in `dir`; returns the most
/// operations in flight at once and checks the bytes.
fn lone_read(dir: &std::path::Path, off: u64, len: usize) -> usize {
    lone_read_with(EngineConfig::default(), dir, off, len)
}

/// [`lone_read`] on an engine built with `config`.
fn lone_read_with(config: EngineConfig, dir: &std::path::Path, off: u64, len: usize) -> usize {
    let path = dir.join("disk.img");
    let data = pattern(2 << 20, 9);
    std::fs::write(&path, &data).unwrap();
    let dev = RawFile::open(&path, OpenOptions::default()).unwrap();
    let io = IoCtx::with_config(config).unwrap();
    let mut buf = SharedBuf::new(len);
    let fut = PeakInFlight { fut: Box::pin(dev.read(&io, off, buf.io(), IoTag::DATA)), io: io.clone(), peak: 0 };
    let (res, peak) = io.block_on(fut);
    res.unwrap();
    assert!(buf.bytes() == &data[off as usize..off as usize + len], "read of {len} at {off} returned other bytes");
    peak
}

#[test]
fn a_lone_large_read_from_tmpfs_is_copied_in_parallel_pieces() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let shm = std::path::Path::new("/dev/shm");
    if !shm.is_dir() || cpus < 2 {
        eprintln!("SKIPPED: needs /dev/shm (tmpfs) and 2 CPUs, found dir={} cpus={cpus}", shm.is_dir());
        return;
    }
    let dir = tempfile::tempdir_in(shm).unwrap();
    // 1 MiB + 8 KiB at an odd page: pieces of unequal length, all bytes in place.
    assert!(lone_read(dir.path(), 12288, (1 << 20) + 8192) >= 2, "a lone 1 MiB tmpfs read was not split");
    // Small reads stay whole.
    assert_eq!(lone_read(dir.path(), 4096, 128 << 10), 1);
    // No more pieces than the engine lets io_uring start workers for.
    let one_worker = EngineConfig { max_bounded_workers: 1, ..EngineConfig::default() };
    assert_eq!(lone_read_with(one_worker, dir.path(), 0, 1 << 20), 1, "split with one worker allowed");
    assert!(EngineConfig::default().max_bounded_workers as usize >= cpus.min(4), "default worker cap below the CPUs");
    // An image file (growable) shorter than the read: the pieces past its end read zeros, the
    // piece across it the data then zeros.
    let path = dir.path().join("image.img");
    let data = pattern(300 << 10, 5);
    std::fs::write(&path, &data).unwrap();
    let dev = RawFile::open(&path, OpenOptions { growable: true, ..Default::default() }).unwrap();
    let io = IoCtx::new().unwrap();
    let mut buf = SharedBuf::from_slice(&vec![0xee; 1 << 20]);
    let fut = PeakInFlight { fut: Box::pin(dev.read(&io, 0, buf.io(), IoTag::DATA)), io: io.clone(), peak: 0 };
    let (res, peak) = io.block_on(fut);
    res.unwrap();
    assert!(peak >= 2, "the image read was not split");
    assert!(buf.bytes()[..300 << 10] == data[..], "data before the end of the image");
    assert!(buf.bytes()[300 << 10..].iter().all(|&b| b == 0), "zeros after the end of the image");
    // Elsewhere (the page cache is copied inline) reads are never split.
    let other = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    if is_tmpfs(other.path()) {
        eprintln!("SKIPPED (part): the target directory is on tmpfs too; no other file system to compare with");
        return;
    }
    assert_eq!(lone_read(other.path(), 12288, 1 << 20), 1);
}

fn is_tmpfs(dir: &std::path::Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
    // SAFETY: statfs is plain data (zeroed is valid); `c` is a NUL-terminated path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path pointer and out-pointer.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == 0x0102_1994
}
