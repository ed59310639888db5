//! The 16550 console at 0x3f8 (vm-superio), its interrupt as an eventfd (a KVM irqfd).

use std::io::{self, Write};

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

/// Raises the serial port's interrupt by signalling an eventfd.
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// The serial device: vm-superio's 16550 writing the guest's output to `W`.
pub type SerialDevice = Serial<EventFdTrigger, NoEvents, Box<dyn Write + Send>>;

/// A serial port whose output goes to `out` and whose interrupt signals a fresh eventfd.
pub fn new_serial(out: Box<dyn Write + Send>) -> io::Result<SerialDevice> {
    Ok(Serial::new(EventFdTrigger(EventFd::new(libc::EFD_NONBLOCK)?), out))
}
