//! The virtio-mmio (version 2) register file a driver sees: feature selection, queue setup,
//! device status and config space (virtio 1.2, section 4.2.2).
//!
//! This is pure state: it never touches guest memory or the backend. A write returns a
//! [`TransportEvent`] when the device must act (start the queues on DRIVER_OK, stop them on
//! reset); [`crate::blk_device`] does that.

/// `MagicValue`: "virt" in little endian.
pub const MAGIC_VALUE: u32 = 0x7472_6976;
/// The transport version implemented (virtio 1.x "modern" virtio-mmio).
pub const VERSION: u32 = 2;
/// `VendorID` reported to the driver ("STRA").
pub const VENDOR_ID: u32 = 0x4152_5453;
/// virtio device type of a block device.
pub const DEVICE_ID_BLOCK: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;

/// Register offsets inside the window (virtio 1.2, table 4.1).
pub mod reg {
    use virtio_bindings::virtio_mmio as vm;

    /// Magic value, reads [`super::MAGIC_VALUE`].
    pub const MAGIC: u64 = vm::VIRTIO_MMIO_MAGIC_VALUE as u64;
    /// Transport version.
    pub const VERSION: u64 = vm::VIRTIO_MMIO_VERSION as u64;
    /// Device type.
    pub const DEVICE_ID: u64 = vm::VIRTIO_MMIO_DEVICE_ID as u64;
    /// Vendor id.
    pub const VENDOR_ID: u64 = vm::VIRTIO_MMIO_VENDOR_ID as u64;
    /// 32 feature bits of the device, selected by `DEVICE_FEATURES_SEL`.
    pub const DEVICE_FEATURES: u64 = vm::VIRTIO_MMIO_DEVICE_FEATURES as u64;
    /// Selects which 32 device feature bits `DEVICE_FEATURES` shows.
    pub const DEVICE_FEATURES_SEL: u64 = vm::VIRTIO_MMIO_DEVICE_FEATURES_SEL as u64;
    /// 32 feature bits the driver accepts, selected by `DRIVER_FEATURES_SEL`.
    pub const DRIVER_FEATURES: u64 = vm::VIRTIO_MMIO_DRIVER_FEATURES as u64;
    /// Selects which 32 driver feature bits `DRIVER_FEATURES` sets.
    pub const DRIVER_FEATURES_SEL: u64 = vm::VIRTIO_MMIO_DRIVER_FEATURES_SEL as u64;
    /// Selects the queue the queue registers refer to.
    pub const QUEUE_SEL: u64 = vm::VIRTIO_MMIO_QUEUE_SEL as u64;
    /// Largest size the selected queue may have (0: no such queue).
    pub const QUEUE_NUM_MAX: u64 = vm::VIRTIO_MMIO_QUEUE_NUM_MAX as u64;
    /// Size of the selected queue.
    pub const QUEUE_NUM: u64 = vm::VIRTIO_MMIO_QUEUE_NUM as u64;
    /// Whether the selected queue is ready.
    pub const QUEUE_READY: u64 = vm::VIRTIO_MMIO_QUEUE_READY as u64;
    /// Queue notification (normally caught by a KVM ioeventfd before it gets here).
    pub const QUEUE_NOTIFY: u64 = vm::VIRTIO_MMIO_QUEUE_NOTIFY as u64;
    /// Pending interrupt causes.
    pub const INTERRUPT_STATUS: u64 = vm::VIRTIO_MMIO_INTERRUPT_STATUS as u64;
    /// Acknowledges interrupt causes.
    pub const INTERRUPT_ACK: u64 = vm::VIRTIO_MMIO_INTERRUPT_ACK as u64;
    /// Device status.
    pub const STATUS: u64 = vm::VIRTIO_MMIO_STATUS as u64;
    /// Descriptor table address, low 32 bits.
    pub const QUEUE_DESC_LOW: u64 = vm::VIRTIO_MMIO_QUEUE_DESC_LOW as u64;
    /// Descriptor table address, high 32 bits.
    pub const QUEUE_DESC_HIGH: u64 = vm::VIRTIO_MMIO_QUEUE_DESC_HIGH as u64;
    /// Available (driver) ring address, low 32 bits.
    pub const QUEUE_DRIVER_LOW: u64 = vm::VIRTIO_MMIO_QUEUE_AVAIL_LOW as u64;
    /// Available (driver) ring address, high 32 bits.
    pub const QUEUE_DRIVER_HIGH: u64 = vm::VIRTIO_MMIO_QUEUE_AVAIL_HIGH as u64;
    /// Used (device) ring address, low 32 bits.
    pub const QUEUE_DEVICE_LOW: u64 = vm::VIRTIO_MMIO_QUEUE_USED_LOW as u64;
    /// Used (device) ring address, high 32 bits.
    pub const QUEUE_DEVICE_HIGH: u64 = vm::VIRTIO_MMIO_QUEUE_USED_HIGH as u64;
    /// Config generation counter.
    pub const CONFIG_GENERATION: u64 = vm::VIRTIO_MMIO_CONFIG_GENERATION as u64;
    /// Start of the device-specific config space.
    pub const CONFIG: u64 = vm::VIRTIO_MMIO_CONFIG as u64;
}

/// Device status bits (virtio 1.2, 2.1).
pub mod status {
    use virtio_bindings::virtio_config as vc;

    /// The guest found the device.
    pub const ACKNOWLEDGE: u32 = vc::VIRTIO_CONFIG_S_ACKNOWLEDGE;
    /// The guest has a driver for it.
    pub const DRIVER: u32 = vc::VIRTIO_CONFIG_S_DRIVER;
    /// The driver is ready to drive the device.
    pub const DRIVER_OK: u32 = vc::VIRTIO_CONFIG_S_DRIVER_OK;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = vc::VIRTIO_CONFIG_S_FEATURES_OK;
    /// The device failed and needs a reset.
    pub const DEVICE_NEEDS_RESET: u32 = vc::VIRTIO_CONFIG_S_NEEDS_RESET;
    /// The driver gave up on the device.
    pub const FAILED: u32 = 0x80;
}

/// `InterruptStatus` bit: a used buffer was returned.
pub const INT_VRING: u32 = virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_VRING;
/// `InterruptStatus` bit: the configuration changed (or the device needs a reset).
pub const INT_CONFIG: u32 = virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_CONFIG;

/// What the driver set up for one virtqueue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueConfig {
    /// Largest size the device accepts.
    pub max_size: u16,
    /// Size the driver chose.
    pub size: u16,
    /// The driver enabled the queue.
    pub ready: bool,
    /// Guest address of the descriptor table.
    pub desc: u64,
    /// Guest address of the available ring.
    pub avail: u64,
    /// Guest address of the used ring.
    pub used: u64,
}

impl QueueConfig {
    /// Whether the driver's choices form a usable split virtqueue: a non-zero power-of-two size
    /// up to the maximum ("Queue Size value is always a power of 2", virtio 1.2, 2.7).
    pub fn is_valid(&self) -> bool {
        self.size != 0 && self.size <= self.max_size && self.size.is_power_of_two()
    }
}

/// What the device owner has to do after a register write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportEvent {
    /// The driver set DRIVER_OK: start the ready queues.
    DriverOk,
    /// The driver wrote 0 to `Status`: stop everything and forget the driver's setup.
    Reset,
    /// A `QueueNotify` write reached the VMM (no ioeventfd caught it): kick this queue.
    Notify(u32),
}

/// The register file of one virtio-mmio device.
#[derive(Debug)]
pub struct MmioTransport {
    device_id: u32,
    device_features: u64,
    driver_features: u64,
    device_features_sel: u32,
    driver_features_sel: u32,
    queue_sel: u32,
    queues: Vec<QueueConfig>,
    status: u32,
    interrupt_status: u32,
    config: Vec<u8>,
    config_generation: u32,
}

impl MmioTransport {
    /// A device of type `device_id` offering `device_features`, with `num_queues` queues of at
    /// most `queue_max_size` entries and the given config space bytes.
    pub fn new(device_id: u32, device_features: u64, num_queues: usize, queue_max_size: u16, config: Vec<u8>) -> Self {
        let queue = QueueConfig { max_size: queue_max_size, ..QueueConfig::default() };
        MmioTransport {
            device_id,
            device_features,
            driver_features: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            queue_sel: 0,
            queues: vec![queue; num_queues],
            status: 0,
            interrupt_status: 0,
            config,
            config_generation: 0,
        }
    }

    /// The queues as the driver set them up.
    pub fn queues(&self) -> &[QueueConfig] {
        &self.queues
    }

    /// The features the driver accepted (always a subset of the device's).
    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    /// The device status byte.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Marks the device broken: sets DEVICE_NEEDS_RESET and raises a config interrupt cause
    /// (virtio 1.2, 2.1.2: the driver then resets the device).
    pub fn set_needs_reset(&mut self) {
        self.status |= status::DEVICE_NEEDS_RESET;
        self.interrupt_status |= INT_CONFIG;
    }

    /// The config space the driver reads.
    pub fn config(&self) -> &[u8] {
        &self.config
    }

    /// Takes a new config space from the device (the backend said it changed): the config
    /// generation moves on, and while the driver runs the device a config interrupt cause is
    /// raised. Returns whether the driver should be interrupted.
    pub fn set_config(&mut self, config: Vec<u8>) -> bool {
        self.config = config;
        self.config_generation = self.config_generation.wrapping_add(1);
        if self.status & status::DRIVER_OK != 0 {
            self.interrupt_status |= INT_CONFIG;
            return true;
        }
        false
    }

    fn selected_queue(&mut self) -> Option<&mut QueueConfig> {
        let ready = |q: &&mut QueueConfig| !q.ready;
        self.queues.get_mut(self.queue_sel as usize).filter(ready)
    }

    /// Handles a read of `data.len()` bytes at `offset` in the window. Registers below the
    /// config space answer only 32-bit reads; anything else reads as zeros.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset >= reg::CONFIG {
            let start = (offset - reg::CONFIG) as usize;
            if let Some(src) = self.config.get(start..) {
                let n = src.len().min(data.len());
                data[..n].copy_from_slice(&src[..n]);
            }
            return;
        }
        if data.len() != 4 {
            return;
        }
        let queue = self.queues.get(self.queue_sel as usize);
        let value = match offset {
            reg::MAGIC => MAGIC_VALUE,
            reg::VERSION => VERSION,
            reg::DEVICE_ID => self.device_id,
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device_features as u32,
                1 => (self.device_features >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => queue.map_or(0, |q| q.max_size.into()),
            reg::QUEUE_NUM => queue.map_or(0, |q| q.size.into()),
            reg::QUEUE_READY => queue.map_or(0, |q| q.ready.into()),
            // The backend signals used buffers straight to the guest's interrupt line (irqfd),
            // bypassing this register: report a possible used buffer whenever the device runs,
            // so the driver always looks at its rings (a spurious look is harmless).
            reg::INTERRUPT_STATUS => {
                let vring = if self.status & status::DRIVER_OK != 0 { INT_VRING } else { 0 };
                self.interrupt_status | vring
            }
            reg::STATUS => self.status,
            reg::QUEUE_DESC_LOW => queue.map_or(0, |q| q.desc as u32),
            reg::QUEUE_DESC_HIGH => queue.map_or(0, |q| (q.desc >> 32) as u32),
            reg::QUEUE_DRIVER_LOW => queue.map_or(0, |q| q.avail as u32),
            reg::QUEUE_DRIVER_HIGH => queue.map_or(0, |q| (q.avail >> 32) as u32),
            reg::QUEUE_DEVICE_LOW => queue.map_or(0, |q| q.used as u32),
            reg::QUEUE_DEVICE_HIGH => queue.map_or(0, |q| (q.used >> 32) as u32),
            reg::CONFIG_GENERATION => self.config_generation,
            _ => 0,
        };
        data.copy_from_slice(&value.to_le_bytes());
    }

    /// Handles a write of `data` at `offset` in the window. Writes the spec forbids in the
    /// current state (features after FEATURES_OK, queue setup of a ready queue, odd widths,
    /// config space) are ignored.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Option<TransportEvent> {
        let value = u32::from_le_bytes(data.try_into().ok()?);
        let negotiating = self.status & status::DRIVER != 0 && self.status & status::FEATURES_OK == 0;
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = value,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            reg::DRIVER_FEATURES if negotiating => {
                let (mask, shift) = match self.driver_features_sel {
                    0 => (0xffff_ffff_u64, 0),
                    1 => (0xffff_ffff_0000_0000_u64, 32),
                    _ => return None,
                };
                self.driver_features = (self.driver_features & !mask) | ((u64::from(value) << shift) & mask);
            }
            reg::QUEUE_SEL => self.queue_sel = value,
            reg::QUEUE_NUM => {
                if let Some(q) = self.selected_queue() {
                    q.size = value.try_into().unwrap_or(0);
                }
            }
            reg::QUEUE_READY => {
                if let Some(q) = self.queues.get_mut(self.queue_sel as usize) {
                    q.ready = value == 1;
                }
            }
            reg::QUEUE_DESC_LOW => self.set_queue_addr(|q| &mut q.desc, value, false),
            reg::QUEUE_DESC_HIGH => self.set_queue_addr(|q| &mut q.desc, value, true),
            reg::QUEUE_DRIVER_LOW => self.set_queue_addr(|q| &mut q.avail, value, false),
            reg::QUEUE_DRIVER_HIGH => self.set_queue_addr(|q| &mut q.avail, value, true),
            reg::QUEUE_DEVICE_LOW => self.set_queue_addr(|q| &mut q.used, value, false),
            reg::QUEUE_DEVICE_HIGH => self.set_queue_addr(|q| &mut q.used, value, true),
            reg::QUEUE_NOTIFY => return Some(TransportEvent::Notify(value)),
            reg::INTERRUPT_ACK => self.interrupt_status &= !value,
            reg::STATUS => return self.write_status(value),
            _ => {}
        }
        None
    }

    fn set_queue_addr(&mut self, field: impl Fn(&mut QueueConfig) -> &mut u64, value: u32, high: bool) {
        if let Some(q) = self.selected_queue() {
            let addr = field(q);
            *addr = if high {
                (*addr & 0xffff_ffff) | (u64::from(value) << 32)
            } else {
                (*addr & !0xffff_ffff) | u64::from(value)
            };
        }
    }

    fn write_status(&mut self, value: u32) -> Option<TransportEvent> {
        if value == 0 {
            self.reset();
            return Some(TransportEvent::Reset);
        }
        let mut value = value;
        // FEATURES_OK sticks only if the driver accepted nothing the device does not offer
        // (virtio 1.2, 3.1.1: the driver re-reads the status to check).
        if value & status::FEATURES_OK != 0
            && self.status & status::FEATURES_OK == 0
            && self.driver_features & !self.device_features != 0
        {
            value &= !status::FEATURES_OK;
        }
        let was_running = self.status & status::DRIVER_OK != 0;
        // DEVICE_NEEDS_RESET is the device's bit: the driver cannot clear it without a reset.
        self.status = value | (self.status & status::DEVICE_NEEDS_RESET);
        let starts = value & status::DRIVER_OK != 0 && !was_running;
        if starts && value & status::FEATURES_OK != 0 {
            Some(TransportEvent::DriverOk)
        } else {
            if starts {
                self.set_needs_reset();
            }
            None
        }
    }

    fn reset(&mut self) {
        self.status = 0;
        self.driver_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.interrupt_status = 0;
        for q in &mut self.queues {
            *q = QueueConfig { max_size: q.max_size, ..QueueConfig::default() };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
    const FLUSH: u64 = 1 << virtio_bindings::virtio_blk::VIRTIO_BLK_F_FLUSH;

    fn transport() -> MmioTransport {
        MmioTransport::new(DEVICE_ID_BLOCK, VERSION_1 | FLUSH, 2, 256, vec![0x10, 0, 0, 0, 0, 0, 0, 0])
    }

    fn read32(t: &MmioTransport, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    fn write32(t: &mut MmioTransport, offset: u64, value: u32) -> Option<TransportEvent> {
        t.write(offset, &value.to_le_bytes())
    }

    fn negotiate(t: &mut MmioTransport, high: u32, low: u32) -> u32 {
        write32(t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        write32(t, reg::DRIVER_FEATURES_SEL, 1);
        write32(t, reg::DRIVER_FEATURES, high);
        write32(t, reg::DRIVER_FEATURES_SEL, 0);
        write32(t, reg::DRIVER_FEATURES, low);
        write32(t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK);
        read32(t, reg::STATUS)
    }

    #[test]
    fn identification_registers_describe_a_version_2_block_device() {
        let t = transport();
        assert_eq!(read32(&t, reg::MAGIC), MAGIC_VALUE);
        assert_eq!(read32(&t, reg::VERSION), 2);
        assert_eq!(read32(&t, reg::DEVICE_ID), DEVICE_ID_BLOCK);
    }

    #[test]
    fn device_features_are_shown_in_32_bit_pages() {
        let mut t = transport();
        assert_eq!(read32(&t, reg::DEVICE_FEATURES), FLUSH as u32);
        write32(&mut t, reg::DEVICE_FEATURES_SEL, 1);
        assert_eq!(read32(&t, reg::DEVICE_FEATURES), 1);
        write32(&mut t, reg::DEVICE_FEATURES_SEL, 2);
        assert_eq!(read32(&t, reg::DEVICE_FEATURES), 0);
    }

    #[test]
    fn features_ok_sticks_for_a_subset_of_device_features() {
        let mut t = transport();
        let st = negotiate(&mut t, 1, FLUSH as u32);
        assert_ne!(st & status::FEATURES_OK, 0);
        assert_eq!(t.driver_features(), VERSION_1 | FLUSH);
    }

    #[test]
    fn features_ok_is_refused_for_features_the_device_lacks() {
        let mut t = transport();
        let st = negotiate(&mut t, 1, 1 << 5);
        assert_eq!(st & status::FEATURES_OK, 0);
    }

    #[test]
    fn driver_features_are_frozen_after_features_ok() {
        let mut t = transport();
        negotiate(&mut t, 1, 0);
        write32(&mut t, reg::DRIVER_FEATURES, FLUSH as u32);
        assert_eq!(t.driver_features(), VERSION_1);
    }

    #[test]
    fn queue_setup_is_recorded_per_selected_queue() {
        let mut t = transport();
        write32(&mut t, reg::QUEUE_SEL, 1);
        assert_eq!(read32(&t, reg::QUEUE_NUM_MAX), 256);
        write32(&mut t, reg::QUEUE_NUM, 64);
        write32(&mut t, reg::QUEUE_DESC_LOW, 0x1000);
        write32(&mut t, reg::QUEUE_DESC_HIGH, 0x1);
        write32(&mut t, reg::QUEUE_DRIVER_LOW, 0x2000);
        write32(&mut t, reg::QUEUE_DEVICE_LOW, 0x3000);
        write32(&mut t, reg::QUEUE_READY, 1);
        let q = t.queues()[1];
        assert_eq!((q.size, q.desc, q.avail, q.used, q.ready), (64, 0x1_0000_1000, 0x2000, 0x3000, true));
        assert!(q.is_valid());
        assert!(!t.queues()[0].ready);
        write32(&mut t, reg::QUEUE_SEL, 7);
        assert_eq!(read32(&t, reg::QUEUE_NUM_MAX), 0, "a missing queue has no size");
    }

    #[test]
    fn ready_queue_ignores_setup_writes() {
        let mut t = transport();
        write32(&mut t, reg::QUEUE_NUM, 8);
        write32(&mut t, reg::QUEUE_READY, 1);
        write32(&mut t, reg::QUEUE_NUM, 16);
        write32(&mut t, reg::QUEUE_DESC_LOW, 0x5000);
        assert_eq!((t.queues()[0].size, t.queues()[0].desc), (8, 0));
    }

    #[test]
    fn queue_sizes_must_be_powers_of_two_within_the_maximum() {
        let q = |size| QueueConfig { max_size: 256, size, ..QueueConfig::default() };
        assert!(q(256).is_valid());
        assert!(!q(0).is_valid());
        assert!(!q(48).is_valid());
        assert!(!q(512).is_valid());
    }

    #[test]
    fn driver_ok_after_features_ok_starts_the_device() {
        let mut t = transport();
        negotiate(&mut t, 1, 0);
        let all = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;
        assert_eq!(write32(&mut t, reg::STATUS, all), Some(TransportEvent::DriverOk));
        assert_eq!(write32(&mut t, reg::STATUS, all), None, "only the transition starts it");
        assert_eq!(read32(&t, reg::INTERRUPT_STATUS) & INT_VRING, INT_VRING);
    }

    #[test]
    fn a_new_config_moves_the_generation_and_interrupts_a_running_driver() {
        let mut t = transport();
        assert!(!t.set_config(vec![0x20, 0, 0, 0, 0, 0, 0, 0]), "no interrupt before DRIVER_OK");
        assert_eq!(read32(&t, reg::INTERRUPT_STATUS) & INT_CONFIG, 0);
        assert_eq!(read32(&t, reg::CONFIG_GENERATION), 1);
        negotiate(&mut t, 1, 0);
        let all = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;
        write32(&mut t, reg::STATUS, all);
        assert!(t.set_config(vec![0x30, 0, 0, 0, 0, 0, 0, 0]));
        assert_eq!(read32(&t, reg::CONFIG), 0x30, "the driver reads the new capacity");
        assert_eq!(read32(&t, reg::CONFIG_GENERATION), 2);
        assert_eq!(read32(&t, reg::INTERRUPT_STATUS) & INT_CONFIG, INT_CONFIG);
        write32(&mut t, reg::INTERRUPT_ACK, INT_CONFIG);
        assert_eq!(read32(&t, reg::INTERRUPT_STATUS) & INT_CONFIG, 0, "acknowledged");
    }

    #[test]
    fn driver_ok_without_features_ok_needs_reset() {
        let mut t = transport();
        let ev = write32(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK);
        assert_eq!(ev, None);
        assert_ne!(t.status() & status::DEVICE_NEEDS_RESET, 0);
    }

    #[test]
    fn writing_zero_status_resets_everything() {
        let mut t = transport();
        negotiate(&mut t, 1, 0);
        write32(&mut t, reg::QUEUE_NUM, 8);
        write32(&mut t, reg::QUEUE_READY, 1);
        t.set_needs_reset();
        assert_eq!(write32(&mut t, reg::STATUS, 0), Some(TransportEvent::Reset));
        assert_eq!(t.status(), 0);
        assert_eq!(t.driver_features(), 0);
        assert_eq!(t.queues()[0], QueueConfig { max_size: 256, ..QueueConfig::default() });
        assert_eq!(read32(&t, reg::INTERRUPT_STATUS), 0);
    }

    #[test]
    fn config_space_reads_any_width_and_zero_past_its_end() {
        let t = transport();
        let mut b = [0xffu8; 8];
        t.read(reg::CONFIG, &mut b);
        assert_eq!(u64::from_le_bytes(b), 0x10);
        let mut b = [0xffu8; 4];
        t.read(reg::CONFIG + 6, &mut b);
        assert_eq!(b, [0, 0, 0, 0]);
    }

    #[test]
    fn notify_that_reaches_the_vmm_is_reported() {
        let mut t = transport();
        assert_eq!(write32(&mut t, reg::QUEUE_NOTIFY, 1), Some(TransportEvent::Notify(1)));
    }

    #[test]
    fn odd_width_register_accesses_are_ignored() {
        let mut t = transport();
        assert_eq!(t.write(reg::STATUS, &[0]), None);
        let mut b = [0xffu8; 2];
        t.read(reg::MAGIC, &mut b);
        assert_eq!(b, [0, 0]);
    }
}
