//! The system calls that cannot be made without `unsafe`, behind safe
//! functions: registering a socket with the reactor, the descriptors a
//! binary upgrade passes on, and (in [`pktinfo`]) the UDP calls that carry
//! `IP_PKTINFO`. Everything else goes through rustix or socket2, which wrap
//! their calls safely. Apart from one borrowed descriptor in `relay`, every
//! `unsafe` block of the crate is in this folder, each with its reason.

pub(crate) mod pktinfo;

use std::collections::HashSet;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// A socket that owns its descriptor, so it can be registered with the
/// reactor for as long as it lives (sealed: only std's own types).
pub(crate) trait Owns: AsRawFd + private::Sealed {}
impl Owns for std::net::TcpListener {}
impl Owns for std::net::UdpSocket {}

mod private {
    pub trait Sealed {}
    impl Sealed for std::net::TcpListener {}
    impl Sealed for std::net::UdpSocket {}
}

/// Registers `socket` with the reactor for `interest`.
pub(crate) fn watch<T: Owns>(socket: T, interest: Interest) -> io::Result<AsyncFd<T>> {
    // SAFETY: `T` owns its descriptor (std's `TcpListener` or `UdpSocket`),
    // and the `AsyncFd` owns `T`: the descriptor stays open, and the same
    // socket, for the registration's whole life, and closes only after it
    // is deregistered.
    unsafe { AsyncFd::register_with_interest(socket, interest) }.map_err(io::Error::from)
}

/// Sets an integer socket option (those rustix and socket2 do not name:
/// `SO_SELECT_ERR_QUEUE`, the `PKTINFO` requests).
pub(crate) fn set_int(
    socket: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: setsockopt reads the int we own, of the size we pass, on a
    // descriptor borrowed for the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether descriptor number `fd` is an open socket of `kind`
/// (`SOCK_STREAM`, `SOCK_DGRAM`, `SOCK_SEQPACKET`).
pub(crate) fn is_socket(fd: RawFd, kind: libc::c_int) -> bool {
    let mut got: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes one int into memory we own, of the size we
    // pass; on a number that is not open it fails with EBADF and writes
    // nothing.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut got as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    rc == 0 && got == kind
}

/// Numbers already taken by [`inherited`].
static CLAIMED: Mutex<Option<HashSet<RawFd>>> = Mutex::new(None);

/// Takes descriptor `fd`, inherited from the process this one replaces and
/// named in its environment, as this process's own, if it is an open socket
/// of `kind`; each number once (a second claim gets `None`). It is made
/// close-on-exec like every other descriptor: it came without `FD_CLOEXEC`
/// to survive the exec that started us, and a later upgrade hands over
/// copies of its own, so this one must not reach that successor too.
///
/// Called only while the process starts, with numbers read from the
/// environment the predecessor set: those were open at exec, so nothing in
/// this process made them, and the claim set keeps any from being owned
/// twice.
pub(crate) fn inherited(fd: RawFd, kind: libc::c_int) -> Option<OwnedFd> {
    if fd <= 2 || !is_socket(fd, kind) {
        return None;
    }
    let mut claimed = CLAIMED.lock().unwrap_or_else(|e| e.into_inner());
    if !claimed.get_or_insert_with(HashSet::new).insert(fd) {
        return None;
    }
    // SAFETY: an open socket (checked above), inherited at exec and claimed
    // here once, so nothing else in this process owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // A failure leaves it inheritable: a descriptor more in a successor,
    // never a wrong one.
    let _ = rustix::io::fcntl_setfd(&owned, rustix::io::FdFlags::CLOEXEC);
    Some(owned)
}

/// Makes `cmd`'s child keep `fds` open across its exec (they stay
/// close-on-exec in this process, so no other child gets them).
pub(crate) fn keep_on_exec(cmd: &mut tokio::process::Command, fds: Vec<RawFd>) {
    // SAFETY: the hook runs in the child between fork and exec, where only
    // async-signal-safe calls are allowed: it calls fcntl(F_SETFD) alone,
    // on descriptors the parent keeps open until the spawn returns, and
    // allocates nothing (the list is built before).
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &fds {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Bytes the allocator has handed out and not had back: in use in every
/// glibc arena, plus chunks it mapped on their own (`mallinfo2`). `None`
/// where the C library is not glibc.
pub(crate) fn heap_in_use() -> Option<u64> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 takes no argument and returns a struct by value;
        // it locks each arena while it reads it.
        let m = unsafe { libc::mallinfo2() };
        Some((m.uordblks + m.hblkhd) as u64)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    None
}

/// Gives the pages of freed memory back to the system, in every arena,
/// not only at an arena's top (glibc keeps them otherwise, so a process's
/// resident memory follows its peak, not what it holds).
pub(crate) fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes a byte count and touches only the
    // allocator's own free lists, under its locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The id of user `name` (or `name` itself, if a number), as the system's
/// user database (NSS) has it.
pub(crate) fn user_id(name: &str) -> Option<u32> {
    if let Ok(id) = name.parse() {
        return Some(id);
    }
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: an all-zero passwd is a valid value for getpwnam_r to fill.
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: every pointer is to memory we own, of the sizes we pass; the
    // strings it points `entry` at live in `buf`, read before it goes.
    let rc = unsafe {
        libc::getpwnam_r(
            name.as_ptr(),
            &mut entry,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    (rc == 0 && !found.is_null()).then_some(entry.pw_uid)
}

/// The id of group `name` (or `name` itself, if a number), as the
/// system's group database (NSS) has it.
pub(crate) fn group_id(name: &str) -> Option<u32> {
    if let Ok(id) = name.parse() {
        return Some(id);
    }
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: an all-zero group is a valid value for getgrnam_r to fill.
    let mut entry: libc::group = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::group = std::ptr::null_mut();
    let mut buf = vec![0 as libc::c_char; 64 * 1024];
    // SAFETY: as in `user_id`: our memory, our sizes.
    let rc = unsafe {
        libc::getgrnam_r(
            name.as_ptr(),
            &mut entry,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    (rc == 0 && !found.is_null()).then_some(entry.gr_gid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsFd, IntoRawFd};

    /// A number is claimed once, only as the kind of socket it is, and
    /// comes out close-on-exec.
    #[test]
    fn an_inherited_descriptor_is_claimed_once_and_closed_on_exec() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = l.as_fd().try_clone_to_owned().unwrap().into_raw_fd();
        rustix::io::fcntl_setfd(
            // SAFETY: `fd` is open (just made) and used only in this test.
            unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
            rustix::io::FdFlags::empty(),
        )
        .unwrap();
        assert!(
            inherited(fd, libc::SOCK_DGRAM).is_none(),
            "not a UDP socket"
        );
        let owned = inherited(fd, libc::SOCK_STREAM).expect("a TCP socket");
        assert!(inherited(fd, libc::SOCK_STREAM).is_none(), "claimed twice");
        let flags = rustix::io::fcntl_getfd(&owned).unwrap();
        assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));
        let (read, _write) = rustix::pipe::pipe().unwrap();
        assert!(!is_socket(read.as_fd().as_raw_fd(), libc::SOCK_STREAM));
    }

    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn the_heap_in_use_follows_what_is_held() {
        let before = heap_in_use().unwrap();
        let held = vec![1u8; 8 << 20];
        let during = heap_in_use().unwrap();
        drop(std::hint::black_box(held));
        trim_heap();
        let after = heap_in_use().unwrap();
        // Other tests allocate meanwhile: a mebibyte either way.
        assert!(during >= before + (7 << 20), "{before} -> {during}");
        assert!(after + (7 << 20) <= during, "{during} -> {after}");
    }
}
