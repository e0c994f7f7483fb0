//! Links the `adaptor-torch` binary against libtorch for real (build notes, "libtorch through
//! tch"): an rpath into the libtorch torch-sys built against, so it runs with `LD_LIBRARY_PATH`
//! unset, and `--no-as-needed -ltorch`, so `libtorch.so` (which registers the CUDA kernels on a
//! GPU machine) stays NEEDED instead of being dropped by rustc's `--as-needed`.
//!
//! Test executables (unit and integration) only get the rpath, so that `cargo test` runs without
//! `LD_LIBRARY_PATH` too; the library itself is an rlib and links nothing.

fn main() {
    let lib = std::env::var("DEP_TCH_LIBTORCH_LIB")
        .expect("torch-sys exports DEP_TCH_LIBTORCH_LIB to its direct dependents");
    println!("cargo:rustc-link-arg-bin=adaptor-torch=-Wl,-rpath={lib}");
    println!("cargo:rustc-link-arg-bin=adaptor-torch=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg-bin=adaptor-torch=-ltorch");
    // Unit-test executables of the library are covered by neither `-bins` nor `-tests`.
    println!("cargo:rustc-link-arg=-Wl,-rpath={lib}");
    // For `adaptor-torch env`.
    println!("cargo:rustc-env=ADAPTOR_TORCH_LIBDIR={lib}");
    println!("cargo:rerun-if-changed=build.rs");
}
