//! A served array's metrics for the daemon's `/metrics` page ([`BlockDev::layer_metrics`]):
//! degraded members, rebuild and scrub progress, scrub mismatches, repaired read errors. Read
//! from [`Array::status`], which takes no lock the data path holds for long.
//!
//! [`BlockDev::layer_metrics`]: blockdev::BlockDev::layer_metrics

use blockdev::LayerSample;

use crate::Array;

/// Push `array`'s samples, labelled `array=UUID`.
pub(crate) fn push(array: &Array, out: &mut Vec<LayerSample>) {
    let s = array.status();
    let id = || vec![("array", s.uuid.clone())];
    let degraded = s.members.iter().filter(|m| m.state != "active").count();
    out.push(LayerSample::gauge(
        "strata_raid_degraded_members",
        "Members of the RAID array that are not active (faulty, missing or rebuilding).",
        id(),
        degraded as f64,
    ));
    out.push(LayerSample::gauge(
        "strata_raid_rebuilding",
        "1 while a member of the RAID array is being rebuilt, else 0.",
        id(),
        if s.rebuild_progress.is_some() { 1.0 } else { 0.0 },
    ));
    out.push(LayerSample::gauge(
        "strata_raid_rebuild_progress_ratio",
        "Share of the RAID array rebuilt so far (0 when no rebuild runs).",
        id(),
        s.rebuild_progress.unwrap_or(0.0),
    ));
    out.push(LayerSample::gauge(
        "strata_raid_scrubbing",
        "1 while a scrub of the RAID array runs, else 0.",
        id(),
        if s.scrub_progress.is_some() { 1.0 } else { 0.0 },
    ));
    out.push(LayerSample::gauge(
        "strata_raid_scrub_progress_ratio",
        "Share of the RAID array the running scrub has checked (0 when none runs).",
        id(),
        s.scrub_progress.unwrap_or(0.0),
    ));
    out.push(LayerSample::gauge(
        "strata_raid_scrub_mismatches",
        "Mismatches the last scrub of the RAID array found.",
        id(),
        s.mismatches as f64,
    ));
    out.push(LayerSample::counter(
        "strata_raid_read_errors_repaired_total",
        "Read errors of the RAID array repaired from redundancy since it was assembled.",
        id(),
        s.read_errors_fixed as f64,
    ));
    for m in &s.members {
        out.push(LayerSample::gauge(
            "strata_raid_member_errors",
            "I/O errors seen on a member of the RAID array since it joined.",
            vec![("array", s.uuid.clone()), ("role", m.role.to_string())],
            f64::from(m.errors),
        ));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use blockdev::testdev::FaultDev;
    use blockdev::{BlockDev, IoCtx, LayerSample, MemDisk};

    use crate::{create, CreateOptions, Level};

    fn value(out: &[LayerSample], name: &str) -> f64 {
        out.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no {name}")).value
    }

    #[test]
    fn an_array_is_over_the_network_while_a_member_there_is_present() {
        let io = IoCtx::new().unwrap();
        let remote = Arc::new(FaultDev::new(Arc::new(MemDisk::new(4 << 20).unwrap())));
        remote.set_over_network(true);
        let members: Vec<(String, Arc<dyn BlockDev>)> =
            vec![("local".into(), Arc::new(MemDisk::new(4 << 20).unwrap())), ("remote".into(), remote)];
        let opts = CreateOptions { chunk: 16 << 10, ppl_slots: 16, ..CreateOptions::new(Level::Raid1) };
        let arr = io.block_on(create(&io, members, opts)).unwrap();
        assert!(arr.over_network());
        io.block_on(arr.fail_member(&io, 1)).unwrap();
        assert!(arr.over_network(), "a failed member is still there until it is removed");
    }

    #[test]
    fn a_failed_member_shows_as_degraded() {
        let io = IoCtx::new().unwrap();
        let members: Vec<(String, Arc<dyn BlockDev>)> =
            (0..2).map(|i| (format!("m{i}"), Arc::new(MemDisk::new(4 << 20).unwrap()) as Arc<dyn BlockDev>)).collect();
        let opts = CreateOptions { chunk: 16 << 10, ppl_slots: 16, ..CreateOptions::new(Level::Raid1) };
        let arr = io.block_on(create(&io, members, opts)).unwrap();
        let mut out = Vec::new();
        arr.layer_metrics(&mut out);
        assert_eq!(value(&out, "strata_raid_degraded_members"), 0.0);
        assert_eq!(value(&out, "strata_raid_rebuilding"), 0.0);
        assert!(out.iter().all(|s| s.labels[0] == ("array", arr.status().uuid)));
        io.block_on(arr.fail_member(&io, 1)).unwrap();
        out.clear();
        arr.layer_metrics(&mut out);
        assert_eq!(value(&out, "strata_raid_degraded_members"), 1.0);
        assert_eq!(out.iter().filter(|s| s.name == "strata_raid_member_errors").count(), 2);
    }
}
