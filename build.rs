//! Links the demo kernel (feature `runtime`, target_os = "none") with linker.ld and the selected
//! board's memory.ld. Without `runtime` it emits nothing: a kernel that depends on execmem links
//! with its own script, and no search path of ours reaches its link line.
//!
//! It also builds the module loader's test modules (see [`build_test_modules`]), for every host
//! and target, and sets `cfg(execmem_modules)` when they are built.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::{self, Command},
};

fn main() {
    println!("cargo:rerun-if-changed=linker.ld");
    println!("cargo:rerun-if-changed=board");
    build_test_modules();
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

/// The target the test modules are compiled for, whatever the package is being built for.
const MODULE_TARGET: &str = "aarch64-unknown-none";

/// Compiles each `tests/modules/<name>.rs` into `$OUT_DIR/modules/<name>.o`, an AArch64 ELF
/// relocatable object (ET_REL, never linked) that the module loader's tests load, and then sets
/// `cfg(execmem_modules)`; the tests include the objects with
/// `include_bytes!(concat!(env!("OUT_DIR"), "/modules/<name>.o"))`.
///
/// Nothing is built, and the cfg is not set, when the directory is absent (a package that leaves
/// it out) or when the toolchain has no `aarch64-unknown-none` libraries (a warning says so). A
/// module that does not compile fails the build with rustc's message.
fn build_test_modules() {
    println!("cargo:rustc-check-cfg=cfg(execmem_modules)");
    let root =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let sources = root.join("tests").join("modules");
    if !sources.is_dir() {
        return;
    }
    // Cargo scans the whole directory (relocs.rs includes relocs.s).
    println!("cargo:rerun-if-changed=tests/modules");
    // The compiler cargo runs for this package, so the modules come from the pinned toolchain.
    let rustc = PathBuf::from(env::var_os("RUSTC").unwrap_or_else(|| "rustc".into()));
    if let Err(why) = target_libraries(&rustc) {
        println!(
            "cargo:warning=test modules not built ({why}): the loader tests that load them \
             are left out; `rustup target add {MODULE_TARGET}` adds the target"
        );
        return;
    }
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("modules");
    fs::create_dir_all(&out).unwrap_or_else(|e| panic!("cannot create {}: {e}", out.display()));
    let mut modules: Vec<(String, PathBuf)> = fs::read_dir(&sources)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", sources.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "rs"))
        .map(|path| {
            let name = path
                .file_stem()
                .and_then(|stem| stem.to_str())
                .expect("a module file name is UTF-8")
                .to_owned();
            (name, path)
        })
        .collect();
    modules.sort();
    for (name, source) in &modules {
        compile_module(&rustc, name, source, &out.join(format!("{name}.o")));
    }
    println!("cargo:rustc-cfg=execmem_modules");
}

/// Whether `rustc` has the module target's libraries (libcore): `Err` says what is missing.
fn target_libraries(rustc: &Path) -> Result<(), String> {
    let output = Command::new(rustc)
        .args(["--print", "target-libdir", "--target", MODULE_TARGET])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", rustc.display()))?;
    if !output.status.success() {
        return Err(format!(
            "{} does not know target {MODULE_TARGET}",
            rustc.display()
        ));
    }
    let libdir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    let has_core = fs::read_dir(&libdir).is_ok_and(|entries| {
        entries.filter_map(Result::ok).any(|entry| {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            name.starts_with("libcore-") && name.ends_with(".rlib")
        })
    });
    if has_core {
        Ok(())
    } else {
        Err(format!(
            "no libcore for {MODULE_TARGET} in {}",
            libdir.display()
        ))
    }
}

/// Compiles one module to an object. The flags are all set here: nothing of the package's
/// RUSTFLAGS (the kernel's link arguments, `--cfg loom`, …) reaches the modules.
///
/// - `--crate-type lib --emit obj`: one relocatable object, not an rlib; with one codegen unit
///   rustc writes exactly the file named.
/// - `-C relocation-model=static -C code-model=small`: ADRP/ADD/LDR pairs and direct BL/B, no
///   GOT; read-only data that holds addresses stays in `.rodata.*` (not `.data.rel.ro`).
/// - `-C force-unwind-tables=no`: no `.eh_frame`. The target asks for unwind tables by default,
///   but a `panic=abort` module never unwinds, and the table is allocated read-only data with
///   PREL32s to the text, which the loader places apart from the text.
/// - Sections stay one per function and per static (`.text.<fn>`, `.data.<static>`, …): stable
///   rustc cannot turn function sections off, and the loader must handle them anyway.
fn compile_module(rustc: &Path, name: &str, source: &Path, object: &Path) {
    let output = Command::new(rustc)
        .args(["--edition", "2024"])
        .args(["--crate-type", "lib"])
        .args(["--crate-name", name])
        .args(["--target", MODULE_TARGET])
        .args(["-C", "opt-level=2"])
        .args(["-C", "panic=abort"])
        .args(["-C", "codegen-units=1"])
        .args(["-C", "relocation-model=static"])
        .args(["-C", "code-model=small"])
        .args(["-C", "force-unwind-tables=no"])
        .arg("--emit")
        .arg(format!("obj={}", object.display()))
        .arg(source)
        // Cargo's flags for the package, passed down to build scripts. rustc itself reads
        // neither variable; they are removed so that no tool in between can forward them.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", rustc.display()));
    let messages = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        eprintln!("{messages}");
        eprintln!("error: test module {} does not compile", source.display());
        process::exit(1);
    }
    // Warnings: shown by cargo, which otherwise hides a build script's output.
    for line in messages.lines().filter(|line| !line.trim().is_empty()) {
        println!("cargo:warning={name}: {line}");
    }
}
