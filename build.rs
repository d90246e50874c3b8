//! Link-time glue for the libtorch that `scripts/provision-libtorch.sh` lays out in `.libtorch/`.
//!
//! - rpath to libtorch and the CUDA runtime wheel folder, so binaries and tests run without
//!   `LD_LIBRARY_PATH` (RUNPATH, so `LD_LIBRARY_PATH` still wins on a GPU host with its own torch).
//! - gRPC code from `proto/promptd.proto` and `proto/grpc_predict_v2.proto` (KServe v2), compiled by protox (pure Rust: no protoc needed), and
//!   the messages of SentencePiece's `spiece.model` from `proto/sentencepiece_model.proto`.
//! - `cuda` feature: force a NEEDED entry on libtorch_cuda; nothing references its symbols
//!   directly, so without `--no-as-needed` the linker would drop it and CUDA would never register.
use std::path::PathBuf;

fn main() {
    compile_protos();
    compile_shims();
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-changed=build.rs");
    let libtorch = match std::env::var("LIBTORCH") {
        Ok(dir) => PathBuf::from(dir),
        Err(_) => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".libtorch/torch"),
    };
    let lib = libtorch.join("lib");
    let cuda_rt = libtorch.join("../nvidia/cu13/lib");
    for dir in [&lib, &cuda_rt] {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display());
        // Lets the linker resolve libtorch_cpu's own NEEDED libcudart/libcupti at link time.
        println!("cargo:rustc-link-arg=-Wl,-rpath-link,{}", dir.display());
    }
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        println!("cargo:rustc-link-search=native={}", lib.display());
        // libtorch_cuda needs cuDNN, cuBLAS, ... which live only on the GPU host.
        println!("cargo:rustc-link-arg=-Wl,--allow-shlib-undefined");
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}

/// The C++ shims over libtorch's dynamically quantized linear (`src/model/int8.cpp`) and its
/// oneDNN linear over a reordered weight (`src/model/onednn.cpp`), compiled against the same
/// libtorch headers as tch's own wrapper.
fn compile_shims() {
    println!("cargo:rerun-if-changed=src/model/int8.cpp");
    println!("cargo:rerun-if-changed=src/model/onednn.cpp");
    println!("cargo:rerun-if-changed=src/model/kernels.cpp");
    println!("cargo:rerun-if-changed=src/model/shim.h");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    let libtorch = match std::env::var("LIBTORCH") {
        Ok(dir) => PathBuf::from(dir),
        Err(_) => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".libtorch/torch"),
    };
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    let mut build = cc::Build::new();
    // kernels.cpp splits its work over libtorch's intra-op threads with at::parallel_for, whose
    // OpenMP body is compiled into the caller: build with OpenMP against the GNU runtime the
    // PyPI wheel bundles (one runtime, one thread pool in the process), else it runs serially.
    let gomp = libtorch.join("lib/libgomp.so.1");
    if gomp.exists() {
        build.flag("-fopenmp");
        println!("cargo:rustc-link-arg={}", gomp.display());
    }
    // The shims hold promptd's own numerical kernels (kernels.cpp): optimized in every profile,
    // or a debug build's tests (fair_share's latencies among them) measure -O0 loops.
    build
        .opt_level(2)
        .cpp(true)
        .file("src/model/int8.cpp")
        .file("src/model/onednn.cpp")
        .file("src/model/kernels.cpp")
        .include(libtorch.join("include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .warnings(false)
        .compile("promptd_shims");
}

fn compile_protos() {
    println!("cargo:rerun-if-changed=proto");
    // promptd's own API, and KServe's Open Inference Protocol (package `inference`).
    let files = protox::compile(
        ["proto/promptd.proto", "proto/grpc_predict_v2.proto"],
        ["proto"],
    )
    .unwrap_or_else(|e| panic!("proto/: {e}"));
    // The encoded descriptors, for gRPC server reflection (tonic::include_file_descriptor_set!).
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(
        out.join("promptd_descriptor.bin"),
        prost::Message::encode_to_vec(&files),
    )
    .unwrap_or_else(|e| panic!("writing the descriptor set: {e}"));
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(files)
        .unwrap_or_else(|e| panic!("generating gRPC code: {e}"));
    // SentencePiece's model file (spiece.model): plain messages, no services.
    let spiece = protox::compile(["proto/sentencepiece_model.proto"], ["proto"])
        .unwrap_or_else(|e| panic!("proto/sentencepiece_model.proto: {e}"));
    tonic_prost_build::Config::new()
        .compile_fds(spiece)
        .unwrap_or_else(|e| panic!("generating SentencePiece model code: {e}"));
}
