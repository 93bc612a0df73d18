//! Refuse to start on a CPU older than the one the binary was compiled for.

/// Refuses to run, with a clear message and exit status 78, when this binary was compiled for
/// CPU features (target-cpu=x86-64-v3, native...) that the running CPU lacks, instead of dying
/// with SIGILL somewhere later. Reads CPUID itself: `is_x86_feature_detected!` is constant-true
/// for every feature enabled at compile time. Scalar code and static strings only, so that the
/// check itself does not use the instructions it checks for.
/// Runs from .init_array, before the Rust runtime starts: with LTO, std's own start-up code is
/// compiled for the target CPU too.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[used]
#[link_section = ".init_array"]
static REQUIRE_CPU_FEATURES: extern "C" fn() = require_cpu_features;

#[cfg(target_arch = "x86_64")]
#[inline(never)]
extern "C" fn require_cpu_features() {
    use std::arch::x86_64::{__cpuid, __cpuid_count, _xgetbv};
    use std::io::Write;
    let max = __cpuid(0).eax;
    let l1 = __cpuid(1);
    let (b7, c7) = if max >= 7 {
        let r = __cpuid_count(7, 0);
        (r.ebx, r.ecx)
    } else {
        (0, 0)
    };
    let x1 = __cpuid(0x8000_0001).ecx;
    let (c1, xcr0) = (
        l1.ecx,
        if l1.ecx & (1 << 27) != 0 {
            // SAFETY: XGETBV exists when CPUID reports OSXSAVE.
            unsafe { _xgetbv(0) }
        } else {
            0
        },
    );
    let os_avx = xcr0 & 0b110 == 0b110;
    let os_avx512 = os_avx && xcr0 & 0xe0 == 0xe0;
    let mut ok = true;
    let mut need = |compiled: bool, present: bool, name: &'static [u8]| {
        if compiled && !present {
            if ok {
                let _ = std::io::stderr().write_all(
                    b"error: this exo-p2p binary was built for newer CPUs; this CPU lacks:",
                );
                ok = false;
            }
            let _ = std::io::stderr().write_all(b" ");
            let _ = std::io::stderr().write_all(name);
        }
    };
    need(cfg!(target_feature = "sse3"), c1 & (1 << 0) != 0, b"sse3");
    need(cfg!(target_feature = "ssse3"), c1 & (1 << 9) != 0, b"ssse3");
    need(
        cfg!(target_feature = "sse4.1"),
        c1 & (1 << 19) != 0,
        b"sse4.1",
    );
    need(
        cfg!(target_feature = "sse4.2"),
        c1 & (1 << 20) != 0,
        b"sse4.2",
    );
    need(
        cfg!(target_feature = "popcnt"),
        c1 & (1 << 23) != 0,
        b"popcnt",
    );
    need(
        cfg!(target_feature = "movbe"),
        c1 & (1 << 22) != 0,
        b"movbe",
    );
    need(
        cfg!(target_feature = "avx"),
        c1 & (1 << 28) != 0 && os_avx,
        b"avx",
    );
    need(
        cfg!(target_feature = "fma"),
        c1 & (1 << 12) != 0 && os_avx,
        b"fma",
    );
    need(
        cfg!(target_feature = "f16c"),
        c1 & (1 << 29) != 0 && os_avx,
        b"f16c",
    );
    need(
        cfg!(target_feature = "avx2"),
        b7 & (1 << 5) != 0 && os_avx,
        b"avx2",
    );
    need(cfg!(target_feature = "bmi1"), b7 & (1 << 3) != 0, b"bmi1");
    need(cfg!(target_feature = "bmi2"), b7 & (1 << 8) != 0, b"bmi2");
    need(cfg!(target_feature = "lzcnt"), x1 & (1 << 5) != 0, b"lzcnt");
    need(
        cfg!(target_feature = "avx512f"),
        b7 & (1 << 16) != 0 && os_avx512,
        b"avx512f",
    );
    need(
        cfg!(target_feature = "avx512dq"),
        b7 & (1 << 17) != 0 && os_avx512,
        b"avx512dq",
    );
    need(
        cfg!(target_feature = "avx512cd"),
        b7 & (1 << 28) != 0 && os_avx512,
        b"avx512cd",
    );
    need(
        cfg!(target_feature = "avx512bw"),
        b7 & (1 << 30) != 0 && os_avx512,
        b"avx512bw",
    );
    need(
        cfg!(target_feature = "avx512vl"),
        b7 & (1 << 31) != 0 && os_avx512,
        b"avx512vl",
    );
    need(
        cfg!(target_feature = "avx512vnni"),
        c7 & (1 << 11) != 0 && os_avx512,
        b"avx512vnni",
    );
    if !ok {
        let _ = std::io::stderr().write_all(
            b"\nUse a portable build (TARGET_CPU=x86-64 scripts/build-release.sh) or build on \
              this machine (cargo install --locked --path node).\n",
        );
        std::process::exit(78);
    }
}
