//! Makes every binary of this crate (the CLI, tests, benches) find libtorch without LD_LIBRARY_PATH.
//!
//! torch-sys exports the libtorch lib dir as `DEP_TCH_LIBTORCH_LIB` (its `links = "tch"` metadata).
//! We bake it in as an rpath and force-link libtorch with `--no-as-needed`: without it the linker drops
//! libtorch_cuda (no symbol is referenced directly) and CUDA silently falls back to CPU (tch-rs #907, #980).
fn main() {
    // seqserve_build_info{commit}: the commit this binary was built from: $SEQSERVE_COMMIT when set
    // (the image build, whose context has no .git), else git's ("unknown" outside git).
    let commit = std::env::var("SEQSERVE_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| {
            std::process::Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .and_then(|o| String::from_utf8(o.stdout).ok())
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=SEQSERVE_COMMIT={commit}");
    println!("cargo:rerun-if-env-changed=SEQSERVE_COMMIT");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=SEQSERVE_CPU_ONLY");
    // SEQSERVE_CPU_ONLY=1 (the Dockerfile's VARIANT=cpu): force nothing, so the linker keeps only
    // what is referenced, libtorch_cpu and libc10, and neither libtorch.so nor libtorch_cuda.so
    // (whose NEEDED entries pull in cuBLAS, cuDNN, NCCL...). libtorch_cpu itself still needs
    // libcudart and libcupti (5 MB together), which the CPU image keeps.
    let cpu_only = std::env::var("SEQSERVE_CPU_ONLY").is_ok_and(|v| v == "1");
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
        if cpu_only {
            return;
        }
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch");
        for cuda in ["torch_cuda"] {
            if std::path::Path::new(&lib)
                .join(format!("lib{cuda}.so"))
                .exists()
            {
                println!("cargo:rustc-link-arg=-l{cuda}");
            }
        }
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
