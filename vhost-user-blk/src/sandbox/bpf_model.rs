//! Test-only: classic BPF as the kernel's seccomp runs it, for the instructions a program may
//! use when its answer depends on the syscall number and architecture alone. This is the
//! subset the kernel's action cache emulates when a filter is installed (Linux 5.11 and later,
//! `seccomp_is_const_allow`): a syscall for which every filter of a thread reaches `RET ALLOW`
//! through these instructions is allowed from a bitmap, with no filter run at all.

use seccompiler::sock_filter;

/// BPF_LD | BPF_W | BPF_ABS.
const LD_W_ABS: u16 = 0x20;
/// BPF_JMP | BPF_JA.
const JMP_JA: u16 = 0x05;
/// BPF_JMP | BPF_{JEQ,JGT,JGE,JSET} | BPF_K.
const JMP_JEQ_K: u16 = 0x15;
const JMP_JGT_K: u16 = 0x25;
const JMP_JGE_K: u16 = 0x35;
const JMP_JSET_K: u16 = 0x45;
/// BPF_ALU | BPF_AND | BPF_K.
const ALU_AND_K: u16 = 0x54;
/// BPF_RET | BPF_K.
const RET_K: u16 = 0x06;
/// seccomp_data offsets (linux/seccomp.h).
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;

/// What running `prog` for syscall `nr` of `arch` returns, when that does not depend on the
/// syscall's arguments or instruction pointer; `None` when it does (or the program uses an
/// instruction outside the subset), which is when the kernel cannot cache the answer.
pub fn constant_action(prog: &[sock_filter], arch: u32, nr: u32) -> Option<u32> {
    let (mut pc, mut acc) = (0usize, 0u32);
    loop {
        let i = prog.get(pc)?;
        match i.code {
            LD_W_ABS => {
                acc = match i.k {
                    DATA_NR => nr,
                    DATA_ARCH => arch,
                    _ => return None,
                }
            }
            RET_K => return Some(i.k),
            JMP_JA => pc += i.k as usize,
            JMP_JEQ_K | JMP_JGT_K | JMP_JGE_K | JMP_JSET_K => {
                let taken = match i.code {
                    JMP_JEQ_K => acc == i.k,
                    JMP_JGT_K => acc > i.k,
                    JMP_JGE_K => acc >= i.k,
                    _ => acc & i.k != 0,
                };
                pc += usize::from(if taken { i.jt } else { i.jf });
            }
            ALU_AND_K => acc &= i.k,
            _ => return None,
        }
        pc += 1;
    }
}
