//! RAID 0, 1 and 5 over any [`blockdev::BlockDev`] (aggregation). Arrives with the RAID issue.
