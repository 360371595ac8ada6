//! The device filter of a VE on cgroup v2: a BPF_PROG_TYPE_CGROUP_DEVICE program
//! attached to the VE's limits cgroup, allowing the same character devices as the
//! v1 devices controller and nothing else. Attached without BPF_F_ALLOW_OVERRIDE,
//! so nothing below (the VE's own cgroups) can replace it, and the VE cannot call
//! bpf(2) at all (seccomp).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use nix::fcntl::{OFlag, open};
use nix::sys::stat::Mode;

use crate::error::{Error, Result};
use crate::sys;

/// Character devices (major, minor; `None` = any minor) a VE may use.
pub(crate) const ALLOWED_CHAR: &[(u32, Option<u32>)] = &[
    (1, Some(3)),    // null
    (1, Some(5)),    // zero
    (1, Some(7)),    // full
    (1, Some(8)),    // random
    (1, Some(9)),    // urandom
    (5, Some(0)),    // tty
    (5, Some(2)),    // ptmx
    (136, None),     // pts
    (10, Some(229)), // fuse
    (10, Some(200)), // net/tun
];

const BPF_PROG_LOAD: u32 = 5;
const BPF_PROG_ATTACH: u32 = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_DEVCG_DEV_CHAR: i32 = 2;

/// One eBPF instruction (struct bpf_insn).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Insn {
    code: u8,
    regs: u8, // dst in the low nibble, src in the high one
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | dst,
        off,
        imm,
    }
}

const LDX_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const AND64_K: u8 = 0x57; // BPF_ALU64 | BPF_AND | BPF_K
const JNE_K: u8 = 0x55; // BPF_JMP | BPF_JNE | BPF_K
const MOV64_K: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
const EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT

/// The program: r2 = device type, r3 = major, r4 = minor (struct
/// bpf_cgroup_dev_ctx { access_type, major, minor } in r1); return 1 for an allowed
/// character device, 0 otherwise.
pub(crate) fn program() -> Vec<Insn> {
    let mut p = vec![
        insn(LDX_W, 2, 1, 0, 0),
        insn(AND64_K, 2, 0, 0, 0xffff),
        insn(LDX_W, 3, 1, 4, 0),
        insn(LDX_W, 4, 1, 8, 0),
    ];
    for (major, minor) in ALLOWED_CHAR {
        let len: i16 = if minor.is_some() { 5 } else { 4 };
        p.push(insn(JNE_K, 2, 0, len - 1, BPF_DEVCG_DEV_CHAR));
        p.push(insn(JNE_K, 3, 0, len - 2, major.cast_signed()));
        if let Some(minor) = minor {
            p.push(insn(JNE_K, 4, 0, 1 + 1, minor.cast_signed()));
        }
        p.push(insn(MOV64_K, 0, 0, 0, 1));
        p.push(insn(EXIT, 0, 0, 0, 0));
    }
    p.push(insn(MOV64_K, 0, 0, 0, 0));
    p.push(insn(EXIT, 0, 0, 0, 0));
    p
}

#[repr(C)]
#[derive(Debug, Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
#[derive(Debug, Default)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

/// Loads the device program and attaches it to the cgroup directory `dir`
/// (replacing one attached earlier).
pub(crate) fn attach(ve: &str, dir: &Path) -> Result<()> {
    let fail = |what: &str, e: nix::Error| Error::Start {
        ve: ve.to_string(),
        reason: format!("restrict device access ({what} of the BPF device filter): {e}"),
    };
    let prog = program();
    let license = c"GPL";
    let mut name = [0u8; 16];
    name[..10].copy_from_slice(b"vectl_devs");
    let load = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: prog.len() as u32,
        insns: prog.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name: name,
        expected_attach_type: BPF_CGROUP_DEVICE,
        ..ProgLoadAttr::default()
    };
    let fd = sys::bpf(BPF_PROG_LOAD, &load).map_err(|e| fail("load", e))?;
    // SAFETY: BPF_PROG_LOAD returned a new fd that nothing else owns.
    let prog_fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let cg = open(
        dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| fail("open the cgroup for attaching", e))?;
    let attach = ProgAttachAttr {
        target_fd: cg.as_raw_fd() as u32,
        attach_bpf_fd: prog_fd.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        ..ProgAttachAttr::default()
    };
    sys::bpf(BPF_PROG_ATTACH, &attach).map_err(|e| fail("attach", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the program the way the kernel would, on (type, major, minor).
    fn eval(p: &[Insn], ctx: [u32; 3]) -> u64 {
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let i = p[pc];
            let (dst, src) = ((i.regs & 0xf) as usize, (i.regs >> 4) as usize);
            pc += 1;
            match i.code {
                LDX_W => {
                    assert_eq!(src, 1);
                    r[dst] = u64::from(ctx[i.off as usize / 4]);
                }
                AND64_K => r[dst] &= i.imm as u64,
                MOV64_K => r[dst] = i.imm as u64,
                JNE_K => {
                    if r[dst] != i.imm as u64 {
                        pc += i.off as usize;
                    }
                }
                EXIT => return r[0],
                c => panic!("unexpected opcode {c:#x}"),
            }
        }
    }

    #[test]
    fn the_filter_allows_exactly_the_listed_character_devices() {
        let p = program();
        let chr = |maj, min, access: u32| [(access << 16) | 2, maj, min];
        let blk = |maj, min| [(2 << 16) | 1, maj, min];
        assert_eq!(eval(&p, chr(1, 3, 6)), 1, "null rw");
        assert_eq!(eval(&p, chr(1, 9, 1)), 1, "urandom mknod");
        assert_eq!(eval(&p, chr(136, 42, 6)), 1, "any pts");
        assert_eq!(eval(&p, chr(10, 229, 6)), 1, "fuse");
        assert_eq!(eval(&p, chr(1, 1, 2)), 0, "/dev/mem");
        assert_eq!(eval(&p, chr(5, 1, 2)), 0, "the host console");
        assert_eq!(eval(&p, chr(21, 0, 6)), 0, "scsi generic");
        assert_eq!(eval(&p, blk(8, 0)), 0, "sda");
        assert_eq!(eval(&p, blk(1, 3)), 0, "a block device numbered like null");
    }
}
