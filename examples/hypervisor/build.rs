//! Links the example with its own linker script: nothing of execmem's (whose build script adds
//! no link argument to a dependent crate).

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rerun-if-changed=linker.ld");
    println!("cargo:rustc-link-arg=-T{dir}/linker.ld");
}
