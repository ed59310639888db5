//! Where array bytes live on the members: chunk striping (RAID 0), mirrors (RAID 1) and md's
//! left-symmetric parity rotation (RAID 5), plus where the metadata areas sit on each member.

use crate::superblock::Level;

/// The array's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// RAID level.
    pub level: Level,
    /// Number of members (roles).
    pub members: usize,
    /// Chunk size in bytes.
    pub chunk: u64,
    /// Bytes of data area on each member (a multiple of `chunk`).
    pub data_size: u64,
}

/// One piece of an array request that lives in one chunk of one member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Member role.
    pub member: usize,
    /// Offset inside the member's data area.
    pub member_off: u64,
    /// Offset inside the request.
    pub req_off: u64,
    /// Length in bytes.
    pub len: u64,
}

impl Geometry {
    /// Members that hold data in each stripe row.
    pub fn data_members(&self) -> usize {
        match self.level {
            Level::Raid0 => self.members,
            Level::Raid1 => 1,
            Level::Raid5 => self.members - 1,
        }
    }

    /// Bytes the array exposes.
    pub fn array_size(&self) -> u64 {
        self.data_size * self.data_members() as u64
    }

    /// Array bytes in one stripe row.
    pub fn stripe_bytes(&self) -> u64 {
        self.chunk * self.data_members() as u64
    }

    /// Number of stripe rows.
    pub fn stripes(&self) -> u64 {
        self.data_size / self.chunk
    }

    /// RAID 5: the parity member of stripe `s` (left-symmetric: parity walks from the last
    /// member down to the first).
    pub fn parity_member(&self, s: u64) -> usize {
        let n = self.members as u64;
        (n - 1 - s % n) as usize
    }

    /// RAID 5: the member holding data chunk `i` of stripe `s` (left-symmetric: data starts
    /// right after parity and wraps around).
    pub fn data_member(&self, s: u64, i: usize) -> usize {
        (self.parity_member(s) + 1 + i) % self.members
    }

    /// RAID 5: which data index member `m` holds in stripe `s` (None for the parity member).
    pub fn data_index(&self, s: u64, m: usize) -> Option<usize> {
        let p = self.parity_member(s);
        (m != p).then(|| (m + self.members - p - 1) % self.members)
    }

    /// Split `[off, off+len)` of the array at chunk boundaries: RAID 0 and RAID 5 data extents
    /// (for RAID 1 the single "data member" is reported as member 0).
    pub fn split(&self, off: u64, len: u64) -> Vec<Extent> {
        let mut out = Vec::new();
        let mut done = 0;
        while done < len {
            let pos = off + done;
            let chunk_no = pos / self.chunk;
            let in_chunk = pos % self.chunk;
            let n = (self.chunk - in_chunk).min(len - done);
            let d = self.data_members() as u64;
            let (stripe, idx) = (chunk_no / d, (chunk_no % d) as usize);
            let member = match self.level {
                Level::Raid0 => idx,
                Level::Raid1 => 0,
                Level::Raid5 => self.data_member(stripe, idx),
            };
            out.push(Extent { member, member_off: stripe * self.chunk + in_chunk, req_off: done, len: n });
            done += n;
        }
        out
    }
}

/// Round `v` up to a multiple of `a` (a power of two).
pub fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geo(level: Level, n: usize) -> Geometry {
        Geometry { level, members: n, chunk: 4096, data_size: 4096 * 16 }
    }

    #[test]
    fn left_symmetric_matches_md_rotation() {
        let g = geo(Level::Raid5, 4);
        // md left-symmetric, 4 disks: stripe 0 parity on disk 3, data D0..D2 on 0,1,2;
        // stripe 1 parity on disk 2, data D3 on 3, D4 on 0, D5 on 1.
        assert_eq!(g.parity_member(0), 3);
        assert_eq!((0..3).map(|i| g.data_member(0, i)).collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!(g.parity_member(1), 2);
        assert_eq!((0..3).map(|i| g.data_member(1, i)).collect::<Vec<_>>(), vec![3, 0, 1]);
        for s in 0..8 {
            for i in 0..3 {
                assert_eq!(g.data_index(s, g.data_member(s, i)), Some(i));
            }
            assert_eq!(g.data_index(s, g.parity_member(s)), None);
        }
    }

    #[test]
    fn split_cuts_at_chunk_boundaries() {
        let g = geo(Level::Raid0, 3);
        let ex = g.split(2048, 8192);
        assert_eq!(ex.len(), 3);
        assert_eq!(ex[0], Extent { member: 0, member_off: 2048, req_off: 0, len: 2048 });
        assert_eq!(ex[1], Extent { member: 1, member_off: 0, req_off: 2048, len: 4096 });
        assert_eq!(ex[2], Extent { member: 2, member_off: 0, req_off: 6144, len: 2048 });
        assert_eq!(g.split(3 * 4096, 512)[0], Extent { member: 0, member_off: 4096, req_off: 0, len: 512 });
    }
}
