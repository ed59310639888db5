//! Privileges: no_new_privs, capabilities, the user to run as, chroot.

use std::ffi::{CStr, CString};
use std::path::Path;
use std::str::FromStr;

use caps::{CapSet, Capability, CapsHashSet};

/// Set no_new_privs for the process (inherited by every thread started after).
pub fn no_new_privs() -> Result<(), String> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(format!("prctl(PR_SET_NO_NEW_PRIVS): {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// The capabilities named by --keep-cap (`CAP_NET_ADMIN`, `net_admin`, any case).
pub fn parse_caps(names: &[String]) -> Result<CapsHashSet, String> {
    let mut set = CapsHashSet::new();
    for name in names {
        let canon = caps::to_canonical(name);
        let cap = Capability::from_str(&canon).map_err(|_| {
            format!("--keep-cap {name}: no such capability (names as in capabilities(7), e.g. CAP_NET_ADMIN)")
        })?;
        set.insert(cap);
    }
    Ok(set)
}

/// Drop every capability of the calling thread but those in `keep` (and those it does not
/// have): the bounding set (while CAP_SETPCAP is still effective), ambient, inheritable,
/// effective and permitted.
pub fn drop_caps(keep: &CapsHashSet) -> Result<(), String> {
    let err = |what: &str, e: caps::errors::CapsError| format!("dropping capabilities ({what}): {e}");
    let permitted = caps::read(None, CapSet::Permitted).map_err(|e| err("read", e))?;
    let kept: CapsHashSet = permitted.intersection(keep).copied().collect();
    if permitted == kept && caps::read(None, CapSet::Ambient).map_err(|e| err("read", e))?.is_empty() {
        return Ok(());
    }
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false) {
        for cap in caps::read(None, CapSet::Bounding).map_err(|e| err("read", e))? {
            if !keep.contains(&cap) {
                caps::drop(None, CapSet::Bounding, cap).map_err(|e| err("bounding", e))?;
            }
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(|e| err("ambient", e))?;
    caps::set(None, CapSet::Inheritable, &CapsHashSet::new()).map_err(|e| err("inheritable", e))?;
    caps::set(None, CapSet::Effective, &kept).map_err(|e| err("effective", e))?;
    caps::set(None, CapSet::Permitted, &kept).map_err(|e| err("permitted", e))?;
    Ok(())
}

/// chroot into `dir` (the process: every thread shares the root).
pub fn chroot(dir: &Path) -> Result<(), String> {
    let c = CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| format!("--chroot {}: contains a NUL byte", dir.display()))?;
    // SAFETY: a NUL-terminated path that lives for the call; then chdir to a static "/".
    let rc = unsafe { libc::chroot(c.as_ptr()) };
    if rc != 0 {
        return Err(format!("--chroot {}: {}", dir.display(), std::io::Error::last_os_error()));
    }
    // SAFETY: as above.
    if unsafe { libc::chdir(c"/".as_ptr()) } != 0 {
        return Err(format!("--chroot {}: chdir /: {}", dir.display(), std::io::Error::last_os_error()));
    }
    tracing::info!("chroot {}", dir.display());
    Ok(())
}

/// A user to run as: looked up at start (before any chroot), switched to after start-up.
#[derive(Clone, Debug)]
pub struct User {
    /// As given.
    pub name: String,
    /// User id.
    pub uid: libc::uid_t,
    /// Primary group id (the user's, or the GROUP given).
    pub gid: libc::gid_t,
    /// Supplementary groups (the user's, from the group database).
    pub groups: Vec<libc::gid_t>,
}

impl User {
    /// Look up `USER[:GROUP]` (names or numbers).
    pub fn lookup(spec: &str) -> Result<User, String> {
        let (user, group) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        let bad = |why: String| format!("--user {spec}: {why}");
        let (uid, user_gid, cname) = match passwd(user) {
            Some(p) => p,
            None => match user.parse::<libc::uid_t>() {
                Ok(uid) => (uid, None, None),
                Err(_) => return Err(bad(format!("no such user '{user}'"))),
            },
        };
        let gid = match group {
            Some(g) => match group_id(g).or_else(|| g.parse().ok()) {
                Some(gid) => gid,
                None => return Err(bad(format!("no such group '{g}'"))),
            },
            None => user_gid.ok_or_else(|| bad("a numeric user with no passwd entry needs :GROUP".into()))?,
        };
        let groups = match &cname {
            Some(c) => group_list(c, gid),
            None => vec![gid],
        };
        Ok(User { name: spec.to_string(), uid, gid, groups })
    }

    /// Switch every thread of the process to this user (glibc applies setresuid/setresgid to
    /// all threads); with a non-zero uid every capability goes with it.
    pub fn switch(&self) -> Result<(), String> {
        let fail = |what: &str| format!("--user {}: {what}: {}", self.name, std::io::Error::last_os_error());
        // SAFETY: a live slice of gids for setgroups; integer arguments otherwise.
        unsafe {
            if libc::setgroups(self.groups.len(), self.groups.as_ptr()) != 0 {
                return Err(fail("setgroups"));
            }
            if libc::setresgid(self.gid, self.gid, self.gid) != 0 {
                return Err(fail("setresgid"));
            }
            if libc::setresuid(self.uid, self.uid, self.uid) != 0 {
                return Err(fail("setresuid"));
            }
            if libc::geteuid() != self.uid || libc::getegid() != self.gid {
                return Err(format!("--user {}: the ids did not change", self.name));
            }
        }
        Ok(())
    }
}

/// (uid, gid, canonical name) of a user name.
fn passwd(name: &str) -> Option<(libc::uid_t, Option<libc::gid_t>, Option<CString>)> {
    let c = CString::new(name).ok()?;
    let mut buf = vec![0u8; 16384];
    // SAFETY: zeroed passwd is valid; getpwnam_r writes into it and `buf` (both live), sets
    // `out` to it on success.
    unsafe {
        let mut pw: libc::passwd = std::mem::zeroed();
        let mut out: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwnam_r(c.as_ptr(), &mut pw, buf.as_mut_ptr().cast(), buf.len(), &mut out);
        if rc != 0 || out.is_null() {
            return None;
        }
        Some((pw.pw_uid, Some(pw.pw_gid), Some(CStr::from_ptr(pw.pw_name).to_owned())))
    }
}

/// The gid of a group name.
fn group_id(name: &str) -> Option<libc::gid_t> {
    let c = CString::new(name).ok()?;
    let mut buf = vec![0u8; 16384];
    // SAFETY: as in `passwd`, for getgrnam_r.
    unsafe {
        let mut gr: libc::group = std::mem::zeroed();
        let mut out: *mut libc::group = std::ptr::null_mut();
        let rc = libc::getgrnam_r(c.as_ptr(), &mut gr, buf.as_mut_ptr().cast(), buf.len(), &mut out);
        if rc != 0 || out.is_null() {
            return None;
        }
        Some(gr.gr_gid)
    }
}

/// The user's supplementary groups plus `gid`.
fn group_list(user: &CStr, gid: libc::gid_t) -> Vec<libc::gid_t> {
    let mut n: libc::c_int = 64;
    loop {
        let mut groups = vec![0 as libc::gid_t; n as usize];
        let cap = n;
        // SAFETY: `groups` holds `n` gids; getgrouplist writes at most that many and sets `n`.
        let rc = unsafe { libc::getgrouplist(user.as_ptr(), gid, groups.as_mut_ptr(), &mut n) };
        if rc >= 0 {
            groups.truncate(n as usize);
            return groups;
        }
        if n <= cap || n > 65536 {
            return vec![gid];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_by_either_name() {
        let s = parse_caps(&["CAP_NET_ADMIN".into(), "sys_admin".into()]).unwrap();
        assert!(s.contains(&Capability::CAP_NET_ADMIN) && s.contains(&Capability::CAP_SYS_ADMIN));
        assert!(parse_caps(&["cap_fly".into()]).unwrap_err().contains("cap_fly"));
    }

    #[test]
    fn root_and_unknown_users() {
        let root = User::lookup("root").unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert!(User::lookup("no-such-user-strata").unwrap_err().contains("no such user"));
        assert!(User::lookup("0:no-such-group-strata").unwrap_err().contains("no such group"));
        assert_eq!(User::lookup("65534:65534").unwrap().uid, 65534);
    }
}
