//! strata's `vhost-user-blk` daemon as a child process of a test: started from `--disk` specs or a
//! config file, waited for until every socket exists, stopped with SIGTERM (must exit 0) or
//! killed with SIGKILL (crash tests). Killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::bins::bin_path;

/// A running daemon.
#[derive(Debug)]
pub struct Daemon {
    child: Option<Child>,
}

impl Daemon {
    /// Starts `vhost-user-blk ARGS` and waits up to 60 s for each of `sockets` to appear.
    /// Panics (naming the daemon's exit status) if it cannot start or exits first.
    pub fn start(args: &[String], sockets: &[PathBuf]) -> Daemon {
        for s in sockets {
            let _ = std::fs::remove_file(s);
        }
        let bin = bin_path("vhost-user-blk").expect("build or find the vhost-user-blk binary");
        let child = Command::new(bin).args(args).stdin(Stdio::null()).spawn().expect("start vhost-user-blk");
        let mut d = Daemon { child: Some(child) };
        let deadline = Instant::now() + Duration::from_secs(60);
        for s in sockets {
            while !s.exists() {
                if let Some(status) = d.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                    panic!("vhost-user-blk {args:?} exited with {status} before creating {}", s.display());
                }
                assert!(Instant::now() < deadline, "daemon did not create {} within 60 s", s.display());
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        d
    }

    /// Starts the daemon with `--config FILE`.
    pub fn start_config(config: &Path, sockets: &[PathBuf]) -> Daemon {
        Daemon::start(&["--config".into(), config.display().to_string()], sockets)
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// SIGTERM, then expect a clean exit 0 within 30 s (in-flight requests finished, disks flushed).
    pub fn stop(mut self) {
        let mut child = self.child.take().expect("running daemon");
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait for daemon") {
                assert!(status.success(), "daemon exited with {status} after SIGTERM");
                return;
            }
            assert!(Instant::now() < deadline, "daemon did not exit within 30 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: the daemon dies wherever it is, as in a crash.
    pub fn kill(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
