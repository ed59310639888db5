//! Settings of a per-thread io engine.

/// How to size and tune one thread's io_uring.
#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    /// Submission queue entries (a power of two; the completion queue gets twice as many).
    pub sq_entries: u32,
    /// Most operations in flight at once on this ring; more wait for a free slot.
    pub max_in_flight: u32,
    /// Slots in the sparse registered-file table.
    pub registered_files: u32,
    /// Cap on io_uring's bounded kernel workers (regular-file and block-device work punted to
    /// threads: fsync, fallocate, buffered writes, and every read and write of a tmpfs file).
    /// 0 leaves the kernel default. The default is one per CPU, at most 4: that work is mostly
    /// CPU-bound copies, and more workers than CPUs only take turns with the thread that feeds
    /// them (docs/design.md, "The engine").
    pub max_bounded_workers: u32,
    /// Cap on io_uring's unbounded kernel workers. 0 leaves the kernel default.
    pub max_unbounded_workers: u32,
    /// Aligned buffers kept per size class in the bounce pool.
    pub pool_buffers_per_class: usize,
    /// Milliseconds a kernel submission thread (io_uring SQPOLL) keeps polling the ring after
    /// its last submission before it sleeps; 0 (the default) means no such thread: this thread
    /// submits with `io_uring_enter`. With one, submissions cost no syscall and page-cache hits
    /// are copied on the kernel thread's CPU, at the price of that CPU while I/O keeps coming.
    pub sq_poll_idle_ms: u32,
    /// The thread sleeps in an epoll loop of its own, never in [`IoCtx::block_on`]'s ring wait
    /// for long: completions and wake-ups from other threads then raise one eventfd
    /// ([`IoCtx::completion_fd`], the same as [`IoCtx::wake_fd`]), and the ring keeps no poll of
    /// its own on the wake eventfd. A wake-up from another thread (each RBD completion is one)
    /// then costs the loop one eventfd read, instead of two reads and a kernel entry to post
    /// the ring's poll completion.
    pub epoll_driven: bool,
}

impl EngineConfig {
    /// True when a kernel thread polls this ring's submission queue.
    pub fn sq_polled(&self) -> bool {
        self.sq_poll_idle_ms > 0
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            sq_entries: 256,
            max_in_flight: 1024,
            registered_files: 64,
            max_bounded_workers: online_cpus().min(4) as u32,
            max_unbounded_workers: 4,
            pool_buffers_per_class: 64,
            sq_poll_idle_ms: 0,
            epoll_driven: false,
        }
    }
}

/// CPUs this process may run on (read once).
pub(crate) fn online_cpus() -> usize {
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}
