//! Every kind's seccomp filter, compiled once at start.

use std::collections::HashMap;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

use blockdev::thread::ThreadKind;

use super::{allow, fast_path, SeccompMode};

/// The compiled filters, by kind.
pub struct Filters {
    progs: HashMap<ThreadKind, BpfProgram>,
    /// Per kind, the filter that refuses (EACCES) what `allow::refused` lists, if anything.
    refusals: HashMap<ThreadKind, BpfProgram>,
}

impl Filters {
    /// Compile every kind's allow-list; a call outside it traps (`on`) or is logged (`log`).
    /// `None` (with a warning) on an architecture the tables do not cover.
    pub fn build(mode: SeccompMode) -> Result<Option<Filters>, String> {
        let Ok(arch) = TargetArch::try_from(std::env::consts::ARCH) else {
            tracing::warn!("seccomp filters are not built for {}: running without them", std::env::consts::ARCH);
            return Ok(None);
        };
        let mismatch = if mode == SeccompMode::Log { SeccompAction::Log } else { SeccompAction::Trap };
        let refuse =
            if mode == SeccompMode::Log { SeccompAction::Log } else { SeccompAction::Errno(libc::EACCES as u32) };
        let compile = |kind: ThreadKind, rules, mismatch: &SeccompAction, matched: &SeccompAction| {
            let filter = SeccompFilter::new(rules, mismatch.clone(), matched.clone(), arch)
                .map_err(|e| format!("seccomp filter of the {} threads: {e}", kind.name()))?;
            BpfProgram::try_from(filter).map_err(|e| format!("seccomp filter of the {} threads: {e}", kind.name()))
        };
        let mut progs = HashMap::new();
        let mut refusals = HashMap::new();
        for kind in ThreadKind::ALL {
            let rules = allow::rules(kind);
            let prog = compile(kind, rules.clone(), &mismatch, &SeccompAction::Allow)?;
            progs.insert(kind, fast_path::prepend(prog, &rules));
            let refused = allow::refused(kind);
            if !refused.is_empty() {
                refusals.insert(kind, compile(kind, refused, &SeccompAction::Allow, &refuse)?);
            }
        }
        Ok(Some(Filters { progs, refusals }))
    }

    /// Install `kind`'s filter on the calling thread.
    pub fn apply(&self, kind: ThreadKind) -> Result<(), String> {
        let prog = self.progs.get(&kind).ok_or("no filter for this kind")?;
        seccompiler::apply_filter(prog).map_err(|e| format!("installing the seccomp filter: {e}"))?;
        if let Some(prog) = self.refusals.get(&kind) {
            seccompiler::apply_filter(prog).map_err(|e| format!("installing the seccomp filter: {e}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_compiles_in_both_modes() {
        for mode in [SeccompMode::On, SeccompMode::Log] {
            let f = Filters::build(mode).unwrap().unwrap();
            for kind in ThreadKind::ALL {
                assert!(!f.progs[&kind].is_empty(), "{kind:?}");
            }
        }
    }

    #[test]
    fn spawning_kinds_allow_what_their_children_need() {
        // Filters stack: a child's calls must pass its parent's filter too.
        let covers = |parent: ThreadKind, child: ThreadKind| {
            let p = allow::rules(parent);
            for (nr, rules) in allow::rules(child) {
                let pr = p
                    .get(&nr)
                    .unwrap_or_else(|| panic!("{parent:?} lacks {} of {child:?}", super::super::names::name(nr)));
                assert!(
                    pr.is_empty() || !rules.is_empty(),
                    "{parent:?} restricts {} that {child:?} allows freely",
                    super::super::names::name(nr)
                );
            }
        };
        covers(ThreadKind::Protocol, ThreadKind::QueueWorker);
        covers(ThreadKind::ControlPlane, ThreadKind::Protocol);
        covers(ThreadKind::ControlPlane, ThreadKind::Background);
        covers(ThreadKind::Rbd, ThreadKind::ControlPlane);
    }

    #[test]
    fn the_kernel_can_answer_every_call_allowed_with_any_arguments_from_its_cache() {
        // Installing a filter, Linux (5.11 and later) works out which syscalls it allows
        // whatever their arguments, and allows those later from a bitmap without running any
        // filter of the thread; the rest run every filter, each instruction costing time on
        // every call. So every call a kind allows freely must stay decidable from its number:
        // in the kind's filter and in its refusal filter (which refuses only `refused`).
        let arch = super::super::fast_path::audit_arch().expect("a known architecture");
        let f = Filters::build(SeccompMode::On).unwrap().unwrap();
        for kind in ThreadKind::ALL {
            let rules = allow::rules(kind);
            let refused = allow::refused(kind);
            for (&nr, conditions) in &rules {
                let nr32 = u32::try_from(nr).unwrap();
                let name = super::super::names::name(nr);
                let answer = super::super::bpf_model::constant_action(&f.progs[&kind], arch, nr32);
                if conditions.is_empty() {
                    assert_eq!(
                        answer,
                        Some(libc::SECCOMP_RET_ALLOW),
                        "{kind:?}: {name} is not answered from the cache"
                    );
                } else {
                    assert_eq!(answer, None, "{kind:?}: {name} has argument rules the filter does not check");
                }
                if let Some(prog) = f.refusals.get(&kind) {
                    let answer = super::super::bpf_model::constant_action(prog, arch, nr32);
                    let expect = if refused.contains_key(&nr) {
                        libc::SECCOMP_RET_ERRNO | libc::EACCES as u32
                    } else {
                        libc::SECCOMP_RET_ALLOW
                    };
                    assert_eq!(answer, Some(expect), "{kind:?}: {name} in the refusal filter");
                }
            }
        }
    }
}
