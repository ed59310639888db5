//! strata's front end: disk specs, the stack builder that turns a spec into a device stack, the
//! bench harness behind `blkctl bench`, and (later) the vhost-user-blk server.

pub mod bench;
pub mod spec;
pub mod stack;
