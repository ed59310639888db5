//! One member slot of an array: its device (absent when missing), its state, its error count
//! and, while it is being rebuilt, how far the rebuild got.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, RwLock};

use blockdev::BlockDev;

use crate::superblock::IN_SYNC;

/// The state of a member as the running array sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberState {
    /// In sync, read and written.
    Active,
    /// Failed or kicked out: neither read nor written.
    Faulty,
    /// A replacement being rebuilt: written always, read only below its rebuild position.
    Rebuilding,
    /// No device was given for this role.
    Missing,
}

impl MemberState {
    fn to_u8(self) -> u8 {
        self as u8
    }

    fn from_u8(v: u8) -> MemberState {
        match v {
            0 => MemberState::Active,
            1 => MemberState::Faulty,
            2 => MemberState::Rebuilding,
            _ => MemberState::Missing,
        }
    }

    /// Lowercase name for status output.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Active => "active",
            MemberState::Faulty => "faulty",
            MemberState::Rebuilding => "rebuilding",
            MemberState::Missing => "missing",
        }
    }
}

/// A member slot (one role).
pub(crate) struct Member {
    name: RwLock<Arc<str>>,
    dev: RwLock<Option<Arc<dyn BlockDev>>>,
    state: AtomicU8,
    /// Read or write errors seen since the member was last (re)added.
    pub errors: AtomicU32,
    /// For a rebuilding member: bytes of the data area known to be in sync.
    pub rebuild_pos: AtomicU64,
}

impl Member {
    pub fn new(name: String, dev: Option<Arc<dyn BlockDev>>, state: MemberState) -> Member {
        Member {
            name: RwLock::new(name.into()),
            dev: RwLock::new(dev),
            state: AtomicU8::new(state.to_u8()),
            errors: AtomicU32::new(0),
            rebuild_pos: AtomicU64::new(IN_SYNC),
        }
    }

    pub fn name(&self) -> String {
        self.name_arc().to_string()
    }

    /// The name, shared (cheap to clone into an I/O's error context).
    pub fn name_arc(&self) -> Arc<str> {
        self.name.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn state(&self) -> MemberState {
        MemberState::from_u8(self.state.load(Ordering::Acquire))
    }

    pub fn set_state(&self, s: MemberState) {
        self.state.store(s.to_u8(), Ordering::Release);
    }

    /// The device, whatever the state (None when missing).
    pub fn dev(&self) -> Option<Arc<dyn BlockDev>> {
        self.dev.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Put a new device in this slot (a replacement).
    pub fn replace(&self, name: String, dev: Arc<dyn BlockDev>, state: MemberState) {
        *self.dev.write().unwrap_or_else(|p| p.into_inner()) = Some(dev);
        *self.name.write().unwrap_or_else(|p| p.into_inner()) = name.into();
        self.errors.store(0, Ordering::Relaxed);
        self.set_state(state);
    }

    /// Written by array writes.
    pub fn writable(&self) -> bool {
        matches!(self.state(), MemberState::Active | MemberState::Rebuilding)
    }

    /// Holds valid data for the member range `[off, off+len)`.
    pub fn readable(&self, off: u64, len: u64) -> bool {
        match self.state() {
            MemberState::Active => true,
            MemberState::Rebuilding => off + len <= self.rebuild_pos.load(Ordering::Acquire),
            _ => false,
        }
    }
}
