//! The daemon's named throttle groups. A group exists while an export is in it. The first export
//! naming a group creates it with its limits (or none); a later member that names limits must
//! name the same ones, or the group must have none yet (then they become the group's): members
//! that disagree are refused, so a group's limits are set once, on the group. `set-limits` on
//! any member changes the group's limits for all of them.

use std::collections::HashMap;
use std::sync::{Mutex, Weak};

use super::group::{Gate, ThrottleGroup};
use super::limits::Limits;

/// Named throttle groups.
#[derive(Default)]
pub struct Registry {
    groups: Mutex<HashMap<String, Weak<ThrottleGroup>>>,
}

impl Registry {
    /// The gate for a new export `export` with `limits`, in the group `group` if named, else on
    /// its own. Refuses limits that disagree with the group's; changes nothing then.
    pub fn gate_for(&self, export: &str, group: Option<&str>, limits: &Limits) -> Result<Gate, String> {
        let Some(name) = group else { return Ok(Gate::private(*limits)) };
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        groups.retain(|_, g| g.strong_count() > 0);
        if let Some(g) = groups.get(name).and_then(Weak::upgrade) {
            let current = g.limits();
            if !limits.is_empty() && *limits != current {
                if !current.is_empty() {
                    return Err(format!(
                        "{export}: throttle-group={name} has the limits {}, and this export names others ({}): \
                         a group's limits are set on the group (leave them out here, or change them with set-limits)",
                        current.describe(),
                        limits.describe()
                    ));
                }
                g.set_limits(*limits);
            }
            return Ok(g.join());
        }
        let g = ThrottleGroup::new(Some(name.to_string()), *limits);
        groups.insert(name.to_string(), std::sync::Arc::downgrade(&g));
        Ok(g.join())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(k: &str, v: u64) -> Limits {
        let mut l = Limits::default();
        l.set(k, v).unwrap();
        l
    }

    #[test]
    fn members_share_a_group_and_must_agree_on_its_limits() {
        let r = Registry::default();
        let a = r.gate_for("a", Some("g"), &limits("iops-total", 100)).unwrap();
        let b = r.gate_for("b", Some("g"), &Limits::default()).unwrap();
        assert!(std::sync::Arc::ptr_eq(a.group(), b.group()));
        let c = r.gate_for("c", Some("g"), &limits("iops-total", 100)).unwrap();
        assert_eq!(a.group().members(), 3);
        let e = r.gate_for("d", Some("g"), &limits("iops-total", 200)).err().unwrap();
        assert!(e.contains("throttle-group=g") && e.contains("iops-total=100") && e.contains("iops-total=200"), "{e}");
        assert_eq!((a.group().members(), a.group().limits()), (3, limits("iops-total", 100)), "nothing changed");
        drop((a, b, c));
        // The group went with its last member: a new one starts afresh.
        let d = r.gate_for("d", Some("g"), &limits("iops-total", 200)).unwrap();
        assert_eq!(d.group().limits(), limits("iops-total", 200));
        let own = r.gate_for("e", None, &limits("bps-total", 5)).unwrap();
        assert!(own.group().name().is_none() && own.on());
    }

    #[test]
    fn a_group_without_limits_takes_the_first_it_is_given() {
        let r = Registry::default();
        let a = r.gate_for("a", Some("g"), &Limits::default()).unwrap();
        assert!(!a.on());
        let _b = r.gate_for("b", Some("g"), &limits("iops-read", 10)).unwrap();
        assert!(a.on());
    }
}
