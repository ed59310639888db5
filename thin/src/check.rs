//! The checker: load a pool's committed metadata and compare every stored reference count with
//! the mappings that use the block. Leaks (a count too high) are harmless and repairable;
//! anything else (a bad checksum, a mapping past the pool, a count too low) is corruption.

use std::sync::Arc;

use super::pool::Pool;
use blockdev::{BlockDev, ErrorKind, IoCtx, Result};

/// What a check found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Corruption found (empty when none).
    pub errors: Vec<String>,
    /// Leaked blocks: (block, stored refcount, references found).
    pub leaks: Vec<(u64, u64, u64)>,
    /// Leaks repaired (with `repair`).
    pub repaired: u64,
}

impl CheckReport {
    /// Exit status as `qemu-img check` uses it: 0 clean, 3 leaks only, 2 corruption.
    pub fn exit_code(&self) -> i32 {
        if !self.errors.is_empty() {
            2
        } else if self.leaks.len() as u64 > self.repaired {
            3
        } else {
            0
        }
    }
}

/// Check the pool on `meta` (and `data`); with `repair`, fix leaks when there is no corruption.
pub async fn check(
    io: &IoCtx,
    meta: Arc<dyn BlockDev>,
    data: Option<Arc<dyn BlockDev>>,
    repair: bool,
) -> Result<CheckReport> {
    let audit = match Pool::load(io, &meta, data.as_ref()).await {
        Ok((_, audit)) => audit,
        Err(e) if e.kind() == ErrorKind::Corrupt => {
            return Ok(CheckReport { errors: vec![e.to_string()], ..Default::default() });
        }
        Err(e) => return Err(e),
    };
    let mut report = CheckReport { errors: audit.errors, leaks: audit.leaks, repaired: 0 };
    if repair && report.errors.is_empty() && !report.leaks.is_empty() {
        let pool = Pool::open(io, meta, data).await?;
        report.repaired = pool.repair_leaks(io).await?;
    }
    Ok(report)
}

/// Check a pool that is open (served): its committed metadata is read from the device while
/// commits wait; with `repair`, leaks are fixed through the open pool when there is no
/// corruption.
pub async fn check_open(io: &IoCtx, pool: &Pool, repair: bool) -> Result<CheckReport> {
    let audit = match pool.audit_committed(io).await {
        Ok(audit) => audit,
        Err(e) if e.kind() == ErrorKind::Corrupt => {
            return Ok(CheckReport { errors: vec![e.to_string()], ..Default::default() });
        }
        Err(e) => return Err(e),
    };
    let mut report = CheckReport { errors: audit.errors, leaks: audit.leaks, repaired: 0 };
    if repair && report.errors.is_empty() && !report.leaks.is_empty() {
        report.repaired = pool.repair_leaks(io).await?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PoolConfig;
    use blockdev::{IoTag, MemDisk, SharedBuf};

    #[test]
    fn leaks_give_exit_3_and_repair_fixes_them() {
        let io = IoCtx::new().unwrap();
        let dev: Arc<dyn BlockDev> = Arc::new(MemDisk::new(16 << 20).unwrap());
        let pool = io.block_on(Pool::create(&io, dev.clone(), None, PoolConfig::default())).unwrap();
        io.block_on(pool.create_volume(&io, "a", 1 << 20)).unwrap();
        let vol = pool.volume("a").unwrap();
        let mut b = SharedBuf::from_slice(&[1; 512]);
        io.block_on(vol.write(&io, 0, b.io(), true, IoTag::DATA)).unwrap();
        pool.set_refcount_for_test(0, 2);
        pool.set_refcount_for_test(5, 1);
        io.block_on(pool.commit(&io)).unwrap();
        drop((vol, pool));

        let report = io.block_on(check(&io, dev.clone(), None, false)).unwrap();
        assert_eq!(report.exit_code(), 3, "{report:?}");
        assert_eq!(report.leaks, vec![(0, 2, 1), (5, 1, 0)]);
        let repaired = io.block_on(check(&io, dev.clone(), None, true)).unwrap();
        assert_eq!((repaired.exit_code(), repaired.repaired), (0, 2));
        assert_eq!(io.block_on(check(&io, dev, None, false)).unwrap().exit_code(), 0);
    }

    #[test]
    fn open_pool_is_checked_from_its_device_and_repaired_in_place() {
        let io = IoCtx::new().unwrap();
        let dev: Arc<dyn BlockDev> = Arc::new(MemDisk::new(16 << 20).unwrap());
        let pool = io.block_on(Pool::create(&io, dev.clone(), None, PoolConfig::default())).unwrap();
        io.block_on(pool.create_volume(&io, "a", 1 << 20)).unwrap();
        let vol = pool.volume("a").unwrap();
        let mut b = SharedBuf::from_slice(&[1; 512]);
        io.block_on(vol.write(&io, 0, b.io(), true, IoTag::DATA)).unwrap();
        assert_eq!(io.block_on(check_open(&io, &pool, false)).unwrap().exit_code(), 0);
        pool.set_refcount_for_test(7, 1);
        // Not committed yet: the device still holds a clean pool.
        assert_eq!(io.block_on(check_open(&io, &pool, false)).unwrap().exit_code(), 0);
        io.block_on(pool.commit(&io)).unwrap();
        let report = io.block_on(check_open(&io, &pool, false)).unwrap();
        assert_eq!((report.exit_code(), report.leaks.clone()), (3, vec![(7, 1, 0)]));
        let fixed = io.block_on(check_open(&io, &pool, true)).unwrap();
        assert_eq!((fixed.exit_code(), fixed.repaired), (0, 1));
        assert_eq!(io.block_on(check_open(&io, &pool, false)).unwrap().exit_code(), 0);
        // The volume is still usable.
        io.block_on(vol.write(&io, 4096, b.io(), true, IoTag::DATA)).unwrap();
    }
}
