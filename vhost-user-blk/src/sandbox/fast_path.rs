//! A few BPF instructions put in front of a compiled filter so the data path's own syscalls are
//! allowed first. seccompiler lays a filter out as one comparison per allowed syscall in
//! ascending number: a kernel that runs the filter on every call (before 5.11) walked a queue
//! worker's `io_uring_enter` (number 426 on x86_64, the highest it makes) past every other
//! entry. The prefix checks the architecture, then the hot syscalls that the kind allows with
//! any arguments, and returns ALLOW for them; anything else falls through to the full filter,
//! which checks everything again as before. It only ever allows what the filter allows.
//!
//! Linux 5.11 and later answer calls that a filter allows whatever their arguments from a
//! bitmap worked out when it is installed, running no filter at all; there the prefix changes
//! nothing (measured: docs/sandbox.md, "Cost"), and what matters is that the hot calls stay
//! allowed without argument checks (`filters.rs` tests that).

use seccompiler::{sock_filter, BpfProgram};

use super::allow::Rules;

/// The syscalls a serving daemon makes most, most frequent first: the rings, the event loop and
/// its eventfds, locks, and librbd's messenger.
const HOT: &[i64] = &[
    libc::SYS_io_uring_enter,
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_futex,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
];

// Classic BPF opcodes (linux/bpf_common.h: class | size | mode, or class | op | source) and the
// seccomp_data offsets (linux/seccomp.h).
/// BPF_LD | BPF_W | BPF_ABS.
const LD_W_ABS: u16 = 0x20;
/// BPF_JMP | BPF_JEQ | BPF_K.
const JMP_JEQ_K: u16 = 0x15;
/// BPF_JMP | BPF_JA.
const JMP_JA: u16 = 0x05;
/// BPF_RET | BPF_K.
const RET_K: u16 = 0x06;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;

/// The audit architecture this build's syscall numbers belong to.
pub(super) fn audit_arch() -> Option<u32> {
    match std::env::consts::ARCH {
        "x86_64" => Some(0xC000_003E),
        "aarch64" => Some(0xC000_00B7),
        _ => None,
    }
}

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter { code, jt: 0, jf: 0, k }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// `prog` (compiled from `rules`) with the fast path in front; `prog` unchanged on an
/// architecture this does not know or when `rules` allow none of the hot syscalls freely.
pub fn prepend(prog: BpfProgram, rules: &Rules) -> BpfProgram {
    let Some(arch) = audit_arch() else { return prog };
    let hot: Vec<u32> = HOT
        .iter()
        .filter(|nr| rules.get(nr).is_some_and(|chain| chain.is_empty()))
        .filter_map(|&nr| u32::try_from(nr).ok())
        .collect();
    if hot.is_empty() {
        return prog;
    }
    // [0] load arch; [1] not ours: jump past the prefix; [2] load nr; [3..3+n) each hot
    // number jumps to the ALLOW at the end; [3+n] jump past the ALLOW; [4+n] ALLOW.
    let n = hot.len();
    let mut out = Vec::with_capacity(prog.len() + n + 5);
    out.push(stmt(LD_W_ABS, DATA_ARCH));
    out.push(jump(JMP_JEQ_K, arch, 0, (n + 3) as u8));
    out.push(stmt(LD_W_ABS, DATA_NR));
    for (i, nr) in hot.iter().enumerate() {
        // From instruction 3+i, the ALLOW at 4+n is (n - i) instructions ahead.
        out.push(jump(JMP_JEQ_K, *nr, (n - i) as u8, 0));
    }
    out.push(stmt(JMP_JA, 1));
    out.push(stmt(RET_K, SECCOMP_RET_ALLOW));
    out.extend(prog);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use seccompiler::{SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};

    /// The program's answer for `nr` (it never depends on arguments here).
    fn run(prog: &[sock_filter], arch: u32, nr: u32) -> u32 {
        super::super::bpf_model::constant_action(prog, arch, nr).expect("an answer from number and architecture alone")
    }

    #[test]
    fn hot_syscalls_allowed_freely_skip_the_filter_and_the_rest_reach_it() {
        let arch = audit_arch().unwrap();
        let mut rules = Rules::new();
        rules.insert(libc::SYS_io_uring_enter, Vec::new());
        rules.insert(libc::SYS_read, Vec::new());
        // Allowed only with conditions: left to the filter.
        let fd_2 = SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, 2).unwrap();
        rules.insert(libc::SYS_write, vec![SeccompRule::new(vec![fd_2]).unwrap()]);
        // Stands for the compiled filter: returns a marker for whatever reaches it.
        let filter = vec![stmt(RET_K, 0x1234)];
        let prog = prepend(filter, &rules);
        assert_eq!(run(&prog, arch, libc::SYS_io_uring_enter as u32), SECCOMP_RET_ALLOW);
        assert_eq!(run(&prog, arch, libc::SYS_read as u32), SECCOMP_RET_ALLOW);
        assert_eq!(run(&prog, arch, libc::SYS_write as u32), 0x1234);
        assert_eq!(run(&prog, arch, libc::SYS_openat as u32), 0x1234);
        assert_eq!(run(&prog, arch, libc::SYS_futex as u32), 0x1234, "not in the rules: the filter decides");
        // Another architecture's numbers never take the fast path.
        assert_eq!(run(&prog, 0x4000_0003, libc::SYS_read as u32), 0x1234);
    }

    #[test]
    fn nothing_hot_leaves_the_filter_as_it_was() {
        let filter = vec![stmt(RET_K, 7)];
        assert_eq!(prepend(filter.clone(), &Rules::new()).len(), filter.len());
    }
}
