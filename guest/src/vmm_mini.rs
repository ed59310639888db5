//! vmm-mini as a guest runner: which binaries to use, and whether this host's KVM can boot
//! Linux under it directly or only nested inside a QEMU TCG guest.
//!
//! vmm-mini needs `/dev/kvm`. Where KVM is hardware virtualization (Intel VMX, AMD SVM) it boots
//! Debian's kernel directly. Where `/dev/kvm` is a software KVM (PVM, the `kvm_pvm` module, as
//! on the machines strata is developed on) guest code runs slowly and Linux cannot boot
//! (docs/vmm-mini.md says why); there vmm-mini runs nested: inside a QEMU TCG guest with
//! `-cpu max` (emulated SVM) whose own `kvm-amd` is fast enough.
//!
//! [`detect_kvm`] decides from facts the kernel publishes, without running a guest:
//! - `/dev/kvm` missing or not openable read-write: [`KvmHost::Missing`];
//! - `/sys/module/kvm_pvm` present (PVM loaded): [`KvmHost::Software`];
//! - neither `vmx` nor `svm` among `/proc/cpuinfo`'s flags: [`KvmHost::Software`] (a KVM
//!   without hardware support);
//! - otherwise [`KvmHost::Hardware`].

use std::path::{Path, PathBuf};

/// What `/dev/kvm` is on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvmHost {
    /// No usable `/dev/kvm`; the reason.
    Missing(String),
    /// KVM on hardware virtualization: vmm-mini boots Linux directly.
    Hardware,
    /// A software KVM (too slow to boot Linux); the reason it was judged so.
    Software(String),
}

impl std::fmt::Display for KvmHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KvmHost::Missing(why) => write!(f, "no usable /dev/kvm: {why}"),
            KvmHost::Hardware => f.write_str("KVM on hardware virtualization"),
            KvmHost::Software(why) => write!(f, "a software KVM: {why}"),
        }
    }
}

/// Classifies this host's KVM (see the module docs for the rules).
pub fn detect_kvm() -> KvmHost {
    if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        return KvmHost::Missing(format!("/dev/kvm: {e}"));
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    classify(&cpuinfo, Path::new("/sys/module/kvm_pvm").exists())
}

/// [`detect_kvm`] once `/dev/kvm` is known to open: `cpuinfo` is `/proc/cpuinfo`'s text,
/// `pvm_loaded` whether the `kvm_pvm` module is loaded.
pub fn classify(cpuinfo: &str, pvm_loaded: bool) -> KvmHost {
    if pvm_loaded {
        return KvmHost::Software("the kvm_pvm module is loaded (PVM, a software KVM)".into());
    }
    let flags = cpuinfo.lines().find(|l| l.starts_with("flags")).and_then(|l| l.split_once(':')).map(|(_, f)| f);
    match flags {
        Some(f) if f.split_whitespace().any(|w| w == "vmx" || w == "svm") => KvmHost::Hardware,
        Some(_) => KvmHost::Software("/proc/cpuinfo's flags show neither vmx nor svm".into()),
        None => KvmHost::Software("/proc/cpuinfo has no flags line".into()),
    }
}

/// The binaries a vmm-mini run needs: vmm-mini itself and strata's vhost-user-blk daemon
/// (which serves the results disk, and in a nested run the disk under test too).
#[derive(Debug, Clone)]
pub struct VmmMini {
    /// The `vmm-mini` binary.
    pub binary: PathBuf,
    /// The `vhost-user-blk` daemon binary.
    pub daemon: PathBuf,
}

impl VmmMini {
    /// Both binaries, or [`crate::Error::NotFound`] naming the missing one.
    pub fn new(binary: impl AsRef<Path>, daemon: impl AsRef<Path>) -> crate::Result<Self> {
        let (binary, daemon) = (binary.as_ref().to_path_buf(), daemon.as_ref().to_path_buf());
        for (what, p) in [("vmm-mini", &binary), ("vhost-user-blk daemon", &daemon)] {
            if !p.is_file() {
                return Err(crate::Error::NotFound(format!(
                    "{what} binary {} (cargo build -p vmm-mini -p vhost-user-blk)",
                    p.display()
                )));
            }
        }
        Ok(VmmMini { binary, daemon })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hardware_needs_vmx_or_svm_and_no_pvm() {
        let intel = "processor\t: 0\nflags\t\t: fpu vme vmx sse2\n";
        let amd = "flags\t\t: fpu svm lm\n";
        let none = "flags\t\t: fpu hypervisor lm\n";
        assert_eq!(classify(intel, false), KvmHost::Hardware);
        assert_eq!(classify(amd, false), KvmHost::Hardware);
        assert!(matches!(classify(none, false), KvmHost::Software(r) if r.contains("neither vmx nor svm")));
        assert!(matches!(classify(intel, true), KvmHost::Software(r) if r.contains("kvm_pvm")));
        assert!(matches!(classify("", false), KvmHost::Software(r) if r.contains("no flags")));
        // A flag that merely contains the letters does not count.
        assert!(matches!(classify("flags : vmxe svmx\n", false), KvmHost::Software(_)));
    }
}
