//! Links the demo kernel (feature `runtime`, target_os = "none") with linker.ld and the selected
//! board's memory.ld. Without `runtime` it emits nothing: a kernel that depends on execmem links
//! with its own script, and no search path of ours reaches its link line.

use std::{env, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=linker.ld");
    println!("cargo:rerun-if-changed=board");
    if env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("none")
        || env::var_os("CARGO_FEATURE_RUNTIME").is_none()
    {
        return;
    }
    let root =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let boards: Vec<String> = env::vars()
        .filter_map(|(key, _)| {
            key.strip_prefix("CARGO_FEATURE_BOARD_")
                .map(|b| b.to_lowercase())
        })
        .collect();
    // More or fewer than one board is reported by src/runtime/board.rs with a clear compile error.
    if let [board] = boards.as_slice() {
        println!(
            "cargo:rustc-link-search={}",
            root.join("board").join(board).display()
        );
    }
    println!(
        "cargo:rustc-link-arg=-T{}",
        root.join("linker.ld").display()
    );
}
