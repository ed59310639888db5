//! Tags that say what an operation is for, so test devices (FaultDev) can target one site.

/// Whether an operation moves guest data or a layer's own metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IoClass {
    /// Guest (or client) data.
    Data,
    /// A layer's metadata: superblocks, tables, bitmaps, logs.
    Metadata,
}

/// The class of an operation plus the site that issued it, e.g. `qcow2.l2_update`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IoTag {
    /// Data or metadata.
    pub class: IoClass,
    /// Dotted name of the issuing site (`layer.what`), stable across releases for tests.
    pub site: &'static str,
}

impl IoTag {
    /// Guest data with no more specific site.
    pub const DATA: IoTag = IoTag { class: IoClass::Data, site: "data" };

    /// A data operation issued at `site`.
    pub const fn data(site: &'static str) -> Self {
        IoTag { class: IoClass::Data, site }
    }

    /// A metadata operation issued at `site`.
    pub const fn meta(site: &'static str) -> Self {
        IoTag { class: IoClass::Metadata, site }
    }
}

impl Default for IoTag {
    fn default() -> Self {
        IoTag::DATA
    }
}
