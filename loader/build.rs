//! Compiles `../ebpf/*.bpf.c` with clang into `OUT_DIR`, for
//! `include_bytes_aligned!` in `src/object.rs`.
//!
//! clang is looked up as `$BPF_CLANG`, then `clang-19`, `clang-16`,
//! `clang`. Without one (or when it fails) the crate still builds, with
//! eBPF disabled: a cargo warning here, a log line at run time. The
//! gateway must build anywhere; the eBPF side is an extra.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const PROGRAMS: [&str; 1] = ["tollgate"];

fn main() {
    println!("cargo::rustc-check-cfg=cfg(tollgate_ebpf)");
    println!("cargo::rerun-if-env-changed=BPF_CLANG");
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap_or_default());
    let src = manifest.join("../ebpf");
    println!("cargo::rerun-if-changed={}", src.display());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap_or_default());
    let Some(clang) = find_clang() else {
        println!(
            "cargo::warning=no clang found (BPF_CLANG, clang-19, clang-16, clang): building without eBPF"
        );
        watch_for_clang();
        return;
    };
    let arch = match env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("aarch64") => "aarch64-linux-gnu",
        _ => "x86_64-linux-gnu",
    };
    for name in PROGRAMS {
        let c = src.join(format!("{name}.bpf.c"));
        let o = out.join(format!("{name}.bpf.o"));
        if let Err(e) = compile(&clang, &c, &o, &src, arch) {
            println!(
                "cargo::warning=eBPF program {name} did not compile ({e}): building without eBPF"
            );
            return;
        }
    }
    println!("cargo::rustc-cfg=tollgate_ebpf");
}

/// Without clang, runs this script again once something is installed in
/// a `PATH` directory (where a clang would appear), not only when
/// `BPF_CLANG` changes: a build made before `tests/run.sh` or the
/// harness installed clang would otherwise stay without eBPF.
fn watch_for_clang() {
    println!("cargo::rerun-if-env-changed=PATH");
    let Some(path) = env::var_os("PATH") else {
        return;
    };
    for dir in env::split_paths(&path).filter(|d| d.is_dir()) {
        println!("cargo::rerun-if-changed={}", dir.display());
    }
}

fn find_clang() -> Option<String> {
    let candidates: Vec<String> = env::var("BPF_CLANG")
        .ok()
        .into_iter()
        .chain(["clang-19", "clang-16", "clang"].map(String::from))
        .collect();
    candidates.into_iter().find(|c| {
        Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

fn compile(clang: &str, src: &Path, out: &Path, include: &Path, arch: &str) -> Result<(), String> {
    let res = Command::new(clang)
        .args(["-target", "bpf", "-O2", "-g", "-Wall", "-Werror"])
        .arg(format!("-I/usr/include/{arch}"))
        .arg(format!("-I{}", include.display()))
        .arg("-c")
        .arg(src)
        .arg("-o")
        .arg(out)
        .output()
        .map_err(|e| e.to_string())?;
    if res.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&res.stderr)
            .lines()
            .next()
            .unwrap_or("clang failed")
            .to_string())
    }
}
