//! `vhost-user-blk`: serve strata disks to QEMU, cloud-hypervisor, vmm-mini and libblkio as
//! virtio-blk devices over vhost-user sockets. Parses arguments and calls the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser};
use vhost_user_blk::config::Config;
use vhost_user_blk::sandbox::{self, Sandbox, SeccompMode};
use vhost_user_blk::server::{demo, service, Daemon, DiskSpec};

/// Serve strata disks as virtio-blk devices over vhost-user sockets.
///
/// Each export listens on its own Unix socket; one frontend (QEMU, cloud-hypervisor, vmm-mini,
/// libblkio) is served at a time, and the next one that connects is served after it leaves.
/// The daemon runs in the foreground. SIGTERM or SIGINT finishes in-flight requests, flushes
/// every disk and exits 0. Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=debug) for more.
#[derive(Parser, Debug)]
#[command(name = "vhost-user-blk", version)]
struct Args {
    /// One export: socket=PATH,format=FMT plus the format's keys and export keys. Repeatable.
    /// The formats are listed at the end of this help.
    ///
    /// Export keys:
    ///   socket=PATH                 vhost-user socket to listen on (required)
    ///   name=NAME                   name in logs and on the control socket (default: socket path)
    ///   num-queues=N                request queues (default 1, at most 64)
    ///   queues-per-thread=N         queues sharing one worker thread and io_uring (default 1)
    ///   queue-size=N                descriptors per queue, a power of two (default 256, at most 1024)
    ///   poll-us=N                   keep polling the queues this long after the last request
    ///                               before sleeping until a kick (default 50, 0 = off;
    ///                               default 0 over an RBD image)
    ///   sqpoll=on|off|MS            a kernel thread per worker submits its I/O, polling MS
    ///                               milliseconds (on = 1) after the last one: more IOPS from
    ///                               the page cache and lower latency, for a busy CPU (default off)
    ///   read-only=on|off            refuse writes; the image is opened read-only (default off)
    ///   serial=ID                   device ID for GET_ID, at most 20 bytes
    ///   logical-block-size=512|4096 block size the guest sees (default 512)
    ///   write-cache=on|off          start in writeback (on, default) or writethrough mode
    ///
    /// I/O limits (QEMU's throttle keys; reads and writes wait, in order, never fail):
    ///   iops-total|iops-read|iops-write=N       operations per second
    ///   bps-total|bps-read|bps-write=N          bytes per second (K, M, G suffixes)
    ///   KEY-max=N, KEY-max-length=S             burst rate, and for how many seconds (default 1)
    ///   iops-size=N                             a request larger than N bytes counts as several
    ///   throttle-group=NAME                     share one budget with the exports naming NAME;
    ///                                           the group's limits are set once (see docs/server.md)
    ///
    /// Paths containing ',' go in a --config file.
    #[arg(long = "disk", value_name = "SPEC", verbatim_doc_comment)]
    disks: Vec<String>,

    /// A TOML file with exports (and optionally api-socket and metrics); see docs/server.md for the
    /// format.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Create (once) an 8 GiB qcow2 disk under ./strata-demo/, serve it at
    /// ./strata-demo/disk.sock and print the QEMU command line that attaches to it.
    #[arg(long)]
    demo: bool,

    /// Serve the control socket (JSON over a Unix socket) at PATH: list exports, statistics,
    /// add and remove exports at run time.
    #[arg(long, value_name = "PATH")]
    api_socket: Option<PathBuf>,

    /// Serve Prometheus metrics over HTTP at /metrics on ADDR: IP:PORT (127.0.0.1:9101,
    /// [::1]:9101; bound exactly as named) or unix:PATH. Per-export request, byte, error and
    /// latency counters, and RAID, thin pool and qcow2 state; see docs/server.md.
    #[arg(long, value_name = "ADDR", value_parser = vhost_user_blk::metrics::MetricsAddr::parse)]
    metrics: Option<vhost_user_blk::metrics::MetricsAddr>,

    /// Write the daemon's pid and a newline to FILE once every socket listens (a symlink is
    /// refused); removed at a clean exit while it still holds that pid. When NOTIFY_SOCKET is set
    /// (systemd Type=notify), READY=1 is sent after that.
    #[arg(long, value_name = "FILE")]
    pidfile: Option<PathBuf>,

    /// Seccomp filters, one per kind of thread (docs/sandbox.md): on = a forbidden system call
    /// kills the daemon with SIGSYS and stderr names the thread and the call; log = the call
    /// goes through and the kernel log records it; off = no filter. Default on (or the config's
    /// `seccomp` key).
    #[arg(long, value_name = "on|log|off")]
    seccomp: Option<SeccompMode>,

    /// Once sockets are bound and images opened, run as USER (and its groups, or GROUP), with
    /// no capability. Images the user could not open keep working: they are open already.
    #[arg(long, value_name = "USER[:GROUP]")]
    user: Option<String>,

    /// Keep this capability (e.g. CAP_SYS_RAWIO); every other one is dropped. Repeatable; not
    /// with --user.
    #[arg(long = "keep-cap", value_name = "CAP")]
    keep_caps: Vec<String>,

    /// Once sockets are bound and images opened, chroot into DIR: paths given to the control
    /// socket's `add` afterwards are inside DIR.
    #[arg(long, value_name = "DIR")]
    chroot: Option<PathBuf>,

    /// Where the kernel has Landlock, files are reachable only beneath the directories of the
    /// paths the exports and flags name: also allow everything beneath DIR (for images the
    /// control socket's `add` will open). Repeatable.
    #[arg(long = "allow-dir", value_name = "DIR")]
    allow_dirs: Vec<PathBuf>,
}

const EXAMPLES: &str = "Examples:
  vhost-user-blk --demo
  vhost-user-blk --disk socket=/tmp/vm1.sock,format=raw,path=vm1.raw,num-queues=2
  vhost-user-blk --disk socket=/tmp/ram.sock,format=mem,size=1G --api-socket /tmp/strata-api.sock
  vhost-user-blk --config strata.toml
  vhost-user-blk --disk socket=/tmp/vm1.sock,format=raw,path=vm1.raw --metrics 127.0.0.1:9101

Attach QEMU (guest memory must be shared):
  qemu-system-x86_64 ... -object memory-backend-memfd,id=mem,size=1G,share=on -numa node,memdev=mem \\
    -chardev socket,id=c0,path=/tmp/vm1.sock -device vhost-user-blk-pci,chardev=c0,num-queues=2";

/// The long help's tail: every format the stack builder knows (from its registry, so a new
/// format shows up here by itself), then examples.
fn after_long_help() -> String {
    let mut text = String::from("Formats (always named, never probed):\n");
    for f in vhost_user_blk::stack::FORMATS {
        text.push_str("  ");
        text.push_str(f.help);
        text.push('\n');
    }
    text.push('\n');
    text.push_str(EXAMPLES);
    text
}

fn main() -> ExitCode {
    // Usage errors exit 1, as every other failure (clap's own default is 2).
    let parsed =
        Args::command().after_long_help(after_long_help()).try_get_matches().and_then(|m| Args::from_arg_matches(&m));
    let args = match parsed {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::FAILURE } else { ExitCode::SUCCESS };
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(vhost_user_blk::log_colour())
        .init();
    // Block the stop signals in every thread (they inherit the mask); main waits for them below.
    let signals = stop_signals();
    match run(args, &signals) {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("vhost-user-blk: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args, signals: &libc::sigset_t) -> Result<ExitCode, String> {
    let mut specs = Vec::new();
    let mut nodes = Vec::new();
    let mut api_socket = args.api_socket;
    let mut metrics = args.metrics;
    let mut opts = sandbox::Options {
        seccomp: args.seccomp.unwrap_or_default(),
        user: args.user,
        keep_caps: args.keep_caps,
        chroot: args.chroot,
        ..sandbox::Options::default()
    };
    let mut allow_dirs = args.allow_dirs;
    if let Some(path) = &args.config {
        let cfg = Config::load(path).map_err(|e| e.to_string())?;
        nodes = cfg.nodes;
        specs.extend(cfg.exports);
        api_socket = api_socket.or(cfg.api_socket);
        metrics = metrics.or(cfg.metrics);
        opts.seccomp = args.seccomp.or(cfg.sandbox.seccomp).unwrap_or_default();
        opts.user = opts.user.or(cfg.sandbox.user);
        opts.chroot = opts.chroot.or(cfg.sandbox.chroot);
        if opts.keep_caps.is_empty() {
            opts.keep_caps = cfg.sandbox.keep_caps;
        }
        allow_dirs.extend(cfg.sandbox.allow_dirs);
    }
    for d in &args.disks {
        specs.push(DiskSpec::parse(d).map_err(|e| format!("--disk {d}: {e}"))?);
    }
    let demo_socket = if args.demo {
        let spec = demo::prepare(&demo::default_dir())?;
        let socket = spec.settings.socket.clone();
        specs.push(spec);
        Some(socket)
    } else {
        None
    };
    if specs.is_empty() && api_socket.is_none() {
        return Err("nothing to serve: give --disk, --config, --demo or --api-socket (see --help)".into());
    }
    // Landlock: the directories of everything named, and --allow-dir.
    opts.allowed_dirs = sandbox::landlock::named_dirs(&specs, &nodes);
    opts.allowed_dirs.extend(api_socket.iter().chain(&args.pidfile).map(|p| sandbox::landlock::dir_of(p)));
    if let Some(vhost_user_blk::metrics::MetricsAddr::Unix(path)) = &metrics {
        opts.allowed_dirs.push(sandbox::landlock::dir_of(path));
    }
    opts.allowed_dirs.extend(allow_dirs);
    // Before any thread starts: every thread strata starts from here on confines itself.
    let sandbox = Sandbox::prepare(&opts)?;
    // Ceph client threads descend from this one, under the Ceph client's filter only.
    if let Err(e) = rbd::start_launcher() {
        Sandbox::abandon();
        return Err(format!("cannot start the Ceph client launcher thread: {e}"));
    }
    let daemon = Daemon::new();
    for node in &nodes {
        if let Err(e) = daemon.add_node(&node.name, &node.device) {
            Sandbox::abandon();
            daemon.shutdown();
            return Err(e);
        }
    }
    for spec in &specs {
        if let Err(e) = daemon.add(spec) {
            Sandbox::abandon();
            daemon.shutdown();
            return Err(e);
        }
    }
    // The control plane's runtime serves the control socket and the metrics, either or both.
    let control = match (&api_socket, &metrics) {
        (None, None) => None,
        _ => match vhost_user_blk::api::ControlRuntime::start() {
            Ok(rt) => Some(rt),
            Err(e) => {
                Sandbox::abandon();
                daemon.shutdown();
                return Err(format!("cannot start the control-plane thread: {e}"));
            }
        },
    };
    let api = match (&api_socket, &control) {
        (Some(path), Some(rt)) => match vhost_user_blk::api::ApiServer::start_on(path, daemon.clone(), rt.handle()) {
            Ok(a) => Some(a),
            Err(e) => {
                Sandbox::abandon();
                daemon.shutdown();
                return Err(format!("--api-socket {}: {e}", path.display()));
            }
        },
        _ => None,
    };
    let metrics_server = match (&metrics, &control) {
        (Some(addr), Some(rt)) => {
            match vhost_user_blk::metrics::MetricsServer::start(addr, daemon.clone(), rt.handle()) {
                Ok(m) => Some(m),
                Err(e) => {
                    Sandbox::abandon();
                    drop(api);
                    daemon.shutdown();
                    return Err(e);
                }
            }
        }
        _ => None,
    };
    // Every socket listens now: the pidfile, then readiness, as systemd expects.
    let pidfile = match &args.pidfile {
        Some(path) => match service::PidFile::write(path) {
            Ok(p) => Some(p),
            Err(e) => {
                Sandbox::abandon();
                drop((api, metrics_server));
                daemon.shutdown();
                return Err(e);
            }
        },
        None => None,
    };
    // Sockets bound, images open: chroot, user, the main thread's filter; then frontends and
    // control clients are served.
    if let Err(e) = sandbox.lock_down() {
        Sandbox::abandon();
        drop((api, metrics_server));
        daemon.shutdown();
        return Err(e);
    }
    service::notify_ready();
    if let Some(socket) = demo_socket {
        let vmm = demo::vmm_mini_program();
        println!("Serving the demo disk at {}. Attach a guest with:\n", socket.display());
        println!("  {} \\\n    <your usual -kernel/-drive/-cdrom options>\n", demo::qemu_command(&socket));
        println!("or with strata's own VMM (one process per guest; needs /dev/kvm):\n");
        println!("  {}\n", demo::vmm_mini_command(&vmm, &socket));
        println!(
            "or check the disk end to end with vmm-mini's built-in probe guest (writes a test pattern\nto the disk's first two and last sectors):\n"
        );
        println!("  {}\n", demo::vmm_mini_probe_command(&vmm, &socket));
        println!("Stop with Ctrl-C.");
    }
    let sig = wait_for_signal(signals);
    tracing::info!("signal {sig}: finishing in-flight requests and flushing");
    let ok = daemon.shutdown();
    // The control socket's file goes with the server, and only while the path still names it.
    drop((api, metrics_server));
    if let Some(p) = pidfile {
        p.remove();
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn stop_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it; pthread_sigmask only
    // changes this thread's mask (threads spawned later inherit it).
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_for_signal(set: &libc::sigset_t) -> i32 {
    loop {
        let mut sig = 0;
        // SAFETY: `set` is an initialised signal set and `sig` a live out-parameter.
        if unsafe { libc::sigwait(set, &mut sig) } == 0 {
            return sig;
        }
    }
}
