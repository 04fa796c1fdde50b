//! QEMU integration tests: each test binary (`tests/*.rs`, `harness = false`) boots the kernel and
//! runs its cases in order; the runner (tests/runner/qemu) counts the `... ok` lines and reads the
//! verdict from the semihosting exit status. A failing case panics, which ends the run with failure.

use crate::println;
use crate::runtime::{self, board};

/// One test case.
pub struct Test {
    /// Its name, as printed.
    pub name: &'static str,
    /// The case; it fails by panicking.
    pub run: fn(),
}

/// Builds a `&[Test]` from function names: `tests![boots_at_el1, heap_works]`.
#[macro_export]
macro_rules! tests {
    ($($case:path),* $(,)?) => {
        &[$($crate::runtime::testing::Test { name: stringify!($case), run: $case }),*]
    };
}

/// Runs every case, then ends the run with success.
pub fn run(suite: &str, tests: &[Test]) {
    let boot = runtime::boot_info();
    println!(
        "suite {suite}: {} tests on {} (entered at EL{})",
        tests.len(),
        board::NAME,
        boot.entry_el
    );
    for test in tests {
        println!("test {} ...", test.name);
        (test.run)();
        println!("test {} ... ok", test.name);
    }
    println!("suite {suite}: {} passed", tests.len());
}
