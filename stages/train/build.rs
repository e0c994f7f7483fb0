//! Gives the test executables of this library an rpath into the libtorch that torch-sys built
//! against, so `cargo test` runs with `LD_LIBRARY_PATH` unset (build-notes.md, "libtorch through
//! tch"). A binary linking this crate does its own linking (see `stages/torch/build.rs`).

fn main() {
    let lib = std::env::var("DEP_TCH_LIBTORCH_LIB")
        .expect("torch-sys exports DEP_TCH_LIBTORCH_LIB to its direct dependents");
    // Unit-test, integration-test, example and bench executables all take plain link args.
    println!("cargo:rustc-link-arg=-Wl,-rpath={lib}");
    // Examples (the benchmark) may run on a GPU: keep libtorch.so NEEDED so that its CUDA
    // kernels register (rustc links with --as-needed, which would drop it).
    println!("cargo:rustc-link-arg-examples=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg-examples=-ltorch");
    println!("cargo:rerun-if-changed=build.rs");
}
