"""The seccomp-BPF program the sandbox passes to bubblewrap (`bwrap --seccomp FD`).

Built here, by hand, so no extra binding is needed: a classic-BPF program over `struct
seccomp_data` (include/uapi/linux/seccomp.h: nr u32 @0, arch u32 @4, ip u64 @8, args[6] u64 @16).
Policy: allow by default, deny what gives a way out of the namespaces or into the kernel's
larger attack surfaces:

- `ptrace`, `process_vm_readv/writev`, `pidfd_getfd`, `kcmp`: no reading or steering another
  process (the harness that relays results included);
- `mount`, `umount2`, `pivot_root`, `chroot`, the new mount API, `unshare`, `setns`, and `clone`
  with any CLONE_NEW* flag: no new namespaces, no remounting the read-only binds;
- `clone3` answers ENOSYS so the C library falls back to `clone`, whose flags we CAN inspect
  (clone3 passes them in memory, out of BPF's reach; Docker and Flatpak do the same);
- `bpf`, `perf_event_open`, `userfaultfd`, `io_uring_*`, `keyctl`/`add_key`/`request_key`, kernel
  modules, kexec, reboot, swap, `syslog`, `acct`, `quotactl`, `iopl`/`ioperm`,
  `open_by_handle_at`/`name_to_handle_at`, `personality`, `ioctl(TIOCSTI)`;
- `shmget`, `semget`, `msgget`, `mq_open`, `memfd_create`, `memfd_secret`: no host memory
  outside the capped work dir (SysV segments would outlive the worker that made them);
- `socket()` for any family but AF_UNIX (the network namespace is empty anyway);
- any other architecture or the x32 ABI: the process is killed.

Only x86_64 is encoded; elsewhere `seccomp_program()` raises and the sandbox refuses to start
(there is no unsafe fallback, see `sandbox.SandboxUnavailable`).
"""

from __future__ import annotations

import errno
import platform
import struct

__all__ = ["DENIED_SYSCALLS", "seccomp_program"]

AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000
AF_UNIX = 1
TIOCSTI = 0x5412
CLONE_NEW_FLAGS = (
    0x00020000  # CLONE_NEWNS
    | 0x02000000  # CLONE_NEWCGROUP
    | 0x04000000  # CLONE_NEWUTS
    | 0x08000000  # CLONE_NEWIPC
    | 0x10000000  # CLONE_NEWUSER
    | 0x20000000  # CLONE_NEWPID
    | 0x40000000  # CLONE_NEWNET
    | 0x00000080  # CLONE_NEWTIME
)

# x86_64 numbers (arch/x86/entry/syscalls/syscall_64.tbl).
DENIED_SYSCALLS: dict[str, int] = {
    "ptrace": 101, "syslog": 103, "uselib": 134, "personality": 135, "vhangup": 153,
    "pivot_root": 155, "chroot": 161, "acct": 163, "mount": 165, "umount2": 166,
    "swapon": 167, "swapoff": 168, "reboot": 169, "sethostname": 170, "setdomainname": 171,
    "iopl": 172, "ioperm": 173, "init_module": 175, "delete_module": 176, "quotactl": 179,
    "lookup_dcookie": 212, "kexec_load": 246, "add_key": 248, "request_key": 249,
    "keyctl": 250, "unshare": 272, "perf_event_open": 298, "name_to_handle_at": 303,
    "open_by_handle_at": 304, "setns": 308, "process_vm_readv": 310, "process_vm_writev": 311,
    "kcmp": 312, "finit_module": 313, "kexec_file_load": 320, "bpf": 321, "userfaultfd": 323,
    "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "open_tree": 428,
    "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
    "pidfd_getfd": 438, "mount_setattr": 442,
    # host memory outside every mount's cap (issue 27): SysV shared memory outlives the worker
    # (until the run's IPC namespace dies; 384 MiB in one test was measured), message queues
    # and semaphores, POSIX mqueues, memory-backed files
    "shmget": 29, "semget": 64, "msgget": 68, "mq_open": 240, "memfd_create": 319,
    "memfd_secret": 447,
}
NR_SOCKET, NR_CLONE, NR_IOCTL, NR_CLONE3 = 41, 56, 16, 435

# classic BPF opcodes (include/uapi/linux/filter.h, seccomp.h)
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JSET_K = 0x45
_JGE_K = 0x35
_RET_K = 0x06
_RET_ALLOW = 0x7FFF0000
_RET_KILL_PROCESS = 0x80000000
_RET_ERRNO = 0x00050000


def _ins(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k & 0xFFFFFFFF)


def seccomp_program() -> bytes:
    """The filter as the bytes of a `struct sock_filter[]` (what `bwrap --seccomp` reads)."""
    machine = platform.machine()
    if machine not in ("x86_64", "AMD64"):
        raise OSError(f"the sandbox's seccomp filter is only written for x86_64, not {machine!r}")
    eperm = _RET_ERRNO | errno.EPERM
    prog: list[bytes] = [
        _ins(_LD_W_ABS, 0, 0, 4),  # arch
        _ins(_JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        _ins(_RET_K, 0, 0, _RET_KILL_PROCESS),
        _ins(_LD_W_ABS, 0, 0, 0),  # nr
        _ins(_JGE_K, 0, 1, X32_SYSCALL_BIT),
        _ins(_RET_K, 0, 0, _RET_KILL_PROCESS),
    ]
    for nr in sorted(DENIED_SYSCALLS.values()):
        prog += [_ins(_JEQ_K, 0, 1, nr), _ins(_RET_K, 0, 0, eperm)]
    prog += [
        _ins(_JEQ_K, 0, 1, NR_CLONE3),
        _ins(_RET_K, 0, 0, _RET_ERRNO | errno.ENOSYS),
        # socket(family, ...): only AF_UNIX (low 32 bits of args[0])
        _ins(_JEQ_K, 0, 4, NR_SOCKET),
        _ins(_LD_W_ABS, 0, 0, 16),
        _ins(_JEQ_K, 1, 0, AF_UNIX),
        _ins(_RET_K, 0, 0, _RET_ERRNO | errno.EAFNOSUPPORT),
        _ins(_RET_K, 0, 0, _RET_ALLOW),
        # clone(flags, ...): no CLONE_NEW*
        _ins(_JEQ_K, 0, 4, NR_CLONE),
        _ins(_LD_W_ABS, 0, 0, 16),
        _ins(_JSET_K, 0, 1, CLONE_NEW_FLAGS),
        _ins(_RET_K, 0, 0, eperm),
        _ins(_RET_K, 0, 0, _RET_ALLOW),
        # ioctl(fd, TIOCSTI, ...): no typing into a terminal outside
        _ins(_JEQ_K, 0, 4, NR_IOCTL),
        _ins(_LD_W_ABS, 0, 0, 24),
        _ins(_JEQ_K, 0, 1, TIOCSTI),
        _ins(_RET_K, 0, 0, eperm),
        _ins(_RET_K, 0, 0, _RET_ALLOW),
        _ins(_RET_K, 0, 0, _RET_ALLOW),
    ]
    return b"".join(prog)
