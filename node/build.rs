//! Records the target triple, which peers advertise (a binary only runs where its triple does).

fn main() {
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".into());
    println!("cargo:rustc-env=SHOAL_TARGET={target}");
    println!("cargo:rerun-if-changed=build.rs");
}
