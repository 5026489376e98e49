//! System calls that return their error instead of writing `errno`.
//!
//! Code that runs in a child made with `CLONE_VM` shares the parent's memory,
//! including the thread-local block of the thread that spawned it: a libc
//! wrapper that sets `errno` on failure would write into that thread's state.
//! These go straight to the kernel (inline `syscall`/`svc` on x86-64 and
//! AArch64; elsewhere through `libc::syscall`, which does touch `errno`),
//! never allocate, never panic, and are usable before `exec`.

/// A raw system call result: the value, or the errno.
pub(super) type Ret = Result<usize, i32>;

#[inline(always)]
fn decode(ret: usize) -> Ret {
    // The kernel returns -4095..=-1 for errors.
    if ret > (-4096isize) as usize {
        Err((ret as isize).wrapping_neg() as i32)
    } else {
        Ok(ret)
    }
}

/// `syscall(nr, a, b, c, d, e, f)`.
///
/// # Safety
///
/// The arguments must be valid for system call `nr`: pointers point to
/// memory of the size and mutability the call needs.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) unsafe fn syscall6(
    nr: libc::c_long,
    a: usize,
    b: usize,
    c: usize,
    d: usize,
    e: usize,
    f: usize,
) -> Ret {
    let ret: usize;
    // SAFETY: the Linux x86-64 system call convention: number in rax,
    // arguments in rdi, rsi, rdx, r10, r8, r9; the kernel clobbers rcx and
    // r11 and returns in rax. The caller vouches for the arguments.
    unsafe {
        core::arch::asm!(
            "syscall",
            inlateout("rax") nr as usize => ret,
            in("rdi") a,
            in("rsi") b,
            in("rdx") c,
            in("r10") d,
            in("r8") e,
            in("r9") f,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    decode(ret)
}

/// `syscall(nr, a, b, c, d, e, f)`.
///
/// # Safety
///
/// As for the x86-64 version.
#[cfg(target_arch = "aarch64")]
#[inline(always)]
pub(super) unsafe fn syscall6(
    nr: libc::c_long,
    a: usize,
    b: usize,
    c: usize,
    d: usize,
    e: usize,
    f: usize,
) -> Ret {
    let ret: usize;
    // SAFETY: the Linux AArch64 system call convention: number in x8,
    // arguments in x0..x5, result in x0; nothing else is clobbered. The
    // caller vouches for the arguments.
    unsafe {
        core::arch::asm!(
            "svc 0",
            in("x8") nr as usize,
            inlateout("x0") a => ret,
            in("x1") b,
            in("x2") c,
            in("x3") d,
            in("x4") e,
            in("x5") f,
            options(nostack),
        );
    }
    decode(ret)
}

/// `syscall(nr, a, b, c, d, e, f)` through libc, which sets `errno` on
/// failure (harmless in a vfork child: the spawning thread is suspended and
/// reads its result from the shared report, not from `errno`).
///
/// # Safety
///
/// As for the x86-64 version.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
#[inline(always)]
pub(super) unsafe fn syscall6(
    nr: libc::c_long,
    a: usize,
    b: usize,
    c: usize,
    d: usize,
    e: usize,
    f: usize,
) -> Ret {
    // SAFETY: the caller vouches for the arguments.
    let r = unsafe { libc::syscall(nr, a, b, c, d, e, f) };
    if r == -1 {
        // SAFETY: __errno_location returns this thread's errno slot.
        Err(unsafe { *libc::__errno_location() })
    } else {
        Ok(r as usize)
    }
}

/// A system call with fewer arguments (the rest are zero).
///
/// # Safety
///
/// As for [`syscall6`].
#[inline(always)]
pub(super) unsafe fn syscall(nr: libc::c_long, args: &[usize]) -> Ret {
    let arg = |i: usize| match args.get(i) {
        Some(v) => *v,
        None => 0,
    };
    // SAFETY: forwarded; unused arguments are zero.
    unsafe { syscall6(nr, arg(0), arg(1), arg(2), arg(3), arg(4), arg(5)) }
}

/// Ends the calling process at once with `code` (no destructors, no atexit
/// handlers, no stdio flush).
pub(super) fn exit_group(code: i32) -> ! {
    loop {
        // SAFETY: exit_group takes an integer and does not return.
        let _ = unsafe { syscall(libc::SYS_exit_group, &[code as usize]) };
    }
}
