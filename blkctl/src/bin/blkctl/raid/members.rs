//! Member lists as `blkctl raid` takes them: each name resolved to the file it is (device and
//! inode, or the block device's number), so one file listed twice, under two names even (a hard
//! link, a symlink, `./a.img` and `a.img`), is refused by name before anything is opened, and a
//! member argument (`fail`'s MEMBER, `replace`'s OLD) is found in the list by what it is, not by
//! how it is spelt.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use vhost_user_blk::stack::raid::split_members;
use vhost_user_blk::stack::raid_registry::member_key;

/// What a path names: a file (device, inode) or a block device (its device number, so two
/// device nodes of one disk are one member).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileId {
    /// A regular file (or anything else that is not a block device).
    Inode(u64, u64),
    /// A block device.
    BlockDev(u64),
}

/// The identity of `path` (symlinks followed), or None when it does not exist.
pub fn identity(path: &str) -> Option<FileId> {
    let m = std::fs::metadata(path).ok()?;
    Some(if m.file_type().is_block_device() { FileId::BlockDev(m.rdev()) } else { FileId::Inode(m.dev(), m.ino()) })
}

/// One member as listed: its name as given and what it is.
#[derive(Debug, Clone)]
pub struct Listed {
    /// The name as the user wrote it.
    pub name: String,
    /// What it names (None: the file does not exist, a missing member).
    pub id: Option<FileId>,
}

/// Split `list` (`A:B:C`) and resolve each member; a member listed twice (the same file under
/// any name, or one missing name twice) is an error that names both spellings.
pub fn resolve(list: &str) -> Result<Vec<Listed>, String> {
    let names = split_members(list);
    resolve_names(list, &names)
}

/// [`resolve`] for members given one by one (`raid create A B C`); `list` names them in errors.
pub fn resolve_names(list: &str, names: &[String]) -> Result<Vec<Listed>, String> {
    let mut out: Vec<Listed> = Vec::with_capacity(names.len());
    for name in names {
        if name.is_empty() {
            return Err(format!("{list}: an empty member name"));
        }
        let l = Listed { name: name.clone(), id: identity(name) };
        if let Some(prev) = out.iter().find(|p| same(p, &l)) {
            return Err(if prev.name == l.name {
                format!("member {} is listed twice", l.name)
            } else {
                format!("member {} is listed twice: {} and {} are the same file", l.name, prev.name, l.name)
            });
        }
        out.push(l);
    }
    Ok(out)
}

/// True when `a` and `b` are one member: the same file, or the same missing path.
fn same(a: &Listed, b: &Listed) -> bool {
    match (a.id, b.id) {
        (Some(x), Some(y)) => x == y,
        (None, None) => member_key(&a.name) == member_key(&b.name),
        _ => false,
    }
}

/// The index in `list` of the member `arg` names (by what it is; a path that does not exist
/// matches a listed path that does not exist either, spelt any way).
pub fn position(list: &[Listed], arg: &str) -> Option<usize> {
    let probe = Listed { name: arg.to_string(), id: identity(arg) };
    list.iter().position(|l| same(l, &probe))
}

/// The names, `A, B, C`, for errors.
pub fn names(list: &[Listed]) -> String {
    list.iter().map(|l| l.name.as_str()).collect::<Vec<_>>().join(", ")
}

/// What `arg` is taken as when it is not a listed member: a role number below `roles`.
pub fn role_number(arg: &str, roles: usize) -> Option<usize> {
    arg.parse::<usize>().ok().filter(|&r| r < roles && !Path::new(arg).exists())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_file_under_two_names_is_listed_twice() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.img");
        std::fs::write(&a, b"x").unwrap();
        let link = dir.path().join("l.img");
        std::os::unix::fs::symlink(&a, &link).unwrap();
        let (a, link) = (a.display().to_string(), link.display().to_string());
        let e = resolve(&format!("{a}:{link}")).unwrap_err();
        assert!(e.contains("are the same file") && e.contains(&link), "{e}");
        let e = resolve(&format!("{a}:{a}")).unwrap_err();
        assert_eq!(e, format!("member {a} is listed twice"));
        let gone = dir.path().join("gone.img").display().to_string();
        let spelt = format!("{}/./gone.img", dir.path().display());
        assert!(resolve(&format!("{a}:{gone}:{spelt}")).unwrap_err().contains("same file"));
        let list = resolve(&format!("{a}:{gone}")).unwrap();
        assert_eq!(position(&list, &link), Some(0));
        assert_eq!(position(&list, &spelt), Some(1));
        assert_eq!(position(&list, "/nonexistent/x.img"), None);
    }
}
