//! Budgets for a child process, applied between fork and exec.
use std::process::Command;

/// Applies the budgets in the child between fork and exec.
pub(crate) fn limit_child(cmd: &mut Command, cpu_seconds: u64, address_space: u64) {
    use std::os::unix::process::CommandExt;

    // SAFETY: the closure runs in the forked child before exec and only
    // makes async-signal-safe system calls (getrlimit, setrlimit, prctl),
    // touching no locks or allocations.
    unsafe {
        cmd.pre_exec(move || {
            // Soft limit: SIGXCPU; the hard limit a second later: SIGKILL.
            set_limit(libc::RLIMIT_CPU, cpu_seconds, cpu_seconds.saturating_add(1))?;
            set_limit(libc::RLIMIT_AS, address_space, address_space)?;
            set_limit(libc::RLIMIT_CORE, 0, 0)?;
            // Do not outlive a server that was killed mid-compilation.
            #[cfg(target_os = "linux")]
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            Ok(())
        });
    }
}

#[cfg(target_os = "linux")]
type Resource = libc::__rlimit_resource_t;
#[cfg(not(target_os = "linux"))]
type Resource = libc::c_int;

/// Lowers a limit; never asks for more than the current hard limit (which
/// an unprivileged process could not raise).
fn set_limit(resource: Resource, soft: u64, hard: u64) -> std::io::Result<()> {
    let mut current = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain system calls on a local struct.
    unsafe {
        if libc::getrlimit(resource, &mut current) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let max = current.rlim_max;
        let wanted = libc::rlimit {
            rlim_cur: (soft as libc::rlim_t).min(max),
            rlim_max: (hard as libc::rlim_t).min(max),
        };
        if libc::setrlimit(resource, &wanted) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
