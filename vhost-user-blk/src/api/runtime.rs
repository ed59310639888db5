//! The control plane's tokio runtime: one thread (`api`) that runs the control socket and the
//! metrics endpoint, whichever of them the daemon serves. Queue workers never run on it.

use tokio::runtime::Handle;

/// The running control-plane runtime. Its thread lives as long as the process.
pub struct ControlRuntime {
    handle: Handle,
}

impl ControlRuntime {
    /// Start the runtime on a new thread named `api`.
    pub fn start() -> std::io::Result<ControlRuntime> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let handle = rt.handle().clone();
        blockdev::thread::spawn(blockdev::thread::ThreadKind::ControlPlane, "api", move || {
            rt.block_on(std::future::pending::<()>())
        })?;
        Ok(ControlRuntime { handle })
    }

    /// Spawn work on it.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }
}
