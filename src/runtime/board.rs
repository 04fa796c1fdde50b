//! The board the kernel is built for: exactly one of the `board-*` features, each a folder under
//! `board/` (memory map, UART, QEMU flags, boot files) whose `mod.rs` is included here.
//!
//! Every board module provides: `NAME`, `DESCRIPTION`, `CPUS`, `STARTED_WITH_BOOT_CPU` (CPUs its
//! loader may start at the entry with the boot CPU), `DEVICE_TREE_PROBE` (where a loader
//! may leave a tree without passing it in x0), `STATIC_RAM` (RAM every variant has), `UART`,
//! `UART_CLOCK_HZ`, `TIMER_HZ`, `OTHER_DEVICES`, `NEEDS` (what to place in RAM), `static_machine()`
//! (the fallback when no device tree is found) and `init_console_pins()`. RAM, CPUs and the GIC,
//! UART and PSCI conduit come from the device tree (`runtime::memory`).

#[cfg(all(feature = "board-virt", feature = "board-rpi4"))]
compile_error!(
    "execmem: two boards selected (board-virt and board-rpi4); pick one: make BOARD=virt or BOARD=rpi4"
);

#[cfg(not(any(feature = "board-virt", feature = "board-rpi4")))]
compile_error!(
    "execmem: no board selected; build through make (BOARD=virt or BOARD=rpi4) or pass --features board-virt"
);

#[cfg(all(feature = "board-virt", not(feature = "board-rpi4")))]
#[path = "../../board/virt/mod.rs"]
mod selected;

#[cfg(all(feature = "board-rpi4", not(feature = "board-virt")))]
#[path = "../../board/rpi4/mod.rs"]
mod selected;

#[cfg(any(feature = "board-virt", feature = "board-rpi4"))]
pub use selected::*;
