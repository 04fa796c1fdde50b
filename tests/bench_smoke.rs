//! The benchmark at smoke scale, in every boot mode, so it cannot rot: every workload runs over
//! every allocator and the JSON is produced. (Figures are not asserted: without `-icount` the PMU
//! reads 0, and timing belongs in `make bench`, not in tests.)

#![no_std]
#![no_main]

use execmem::runtime::{self, bench};
use execmem::tests;

execmem::entry!(main);

fn main() {
    runtime::testing::run("bench_smoke", tests![benchmark_runs_at_smoke_scale]);
}

fn benchmark_runs_at_smoke_scale() {
    bench::run(bench::Scale::Smoke);
    assert!(runtime::exec_pool::audit().is_empty());
    assert_eq!(
        runtime::slot::stats().bytes_live,
        0,
        "the benchmark frees what it allocated"
    );
}
