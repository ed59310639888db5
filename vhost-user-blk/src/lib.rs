//! placeholder until blkctl lands
