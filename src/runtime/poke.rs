//! Text poke in the demo kernel: the manager's ([`crate::manager::ExecManager::text_copy`] and
//! the rest), on the kernel's instance.

use crate::poke::{ExecRegion, PokeError};
use crate::runtime::exec_pool::with_manager;

/// How many 4 KiB alias mappings all pokes so far have made.
pub fn alias_maps() -> usize {
    with_manager!(m => m.alias_maps())
}

/// Copies `src` to exec address `dst` (Linux `text_poke_copy`); one mapped pack.
pub fn text_copy(dst: u64, src: &[u8]) -> Result<(), PokeError> {
    with_manager!(m => m.text_copy(dst, src))
}

/// Copies `src` to `dst`, which must stay inside `region` (a slot or a pack).
pub fn text_copy_within(region: ExecRegion, dst: u64, src: &[u8]) -> Result<(), PokeError> {
    with_manager!(m => m.text_copy_within(region, dst, src))
}

/// Writes `count` copies of the instruction `insn` from `dst` (Linux `aarch64_insn_set`).
pub fn text_set(dst: u64, insn: u32, count: usize) -> Result<(), PokeError> {
    with_manager!(m => m.text_set(dst, insn, count))
}

/// Reads the instruction at exec address `addr`.
pub fn read_insn(addr: u64) -> Result<u32, PokeError> {
    with_manager!(m => m.read_insn(addr))
}

/// Replaces one instruction of live code (CMODX pairs only, Arm ARM B2.2.5).
pub fn patch_insn(addr: u64, expected_old: u32, new: u32) -> Result<(), PokeError> {
    with_manager!(m => m.patch_insn(addr, expected_old, new))
}

/// Arbitrary instruction changes with every other CPU stopped.
pub fn patch_batch(patches: &[(u64, u32)]) -> Result<(), PokeError> {
    with_manager!(m => m.patch_batch(patches))
}

/// Publishes what this CPU wrote to every other CPU (each executes a context synchronisation
/// event before this returns): what every write ends with; after `patch_insn`, no CPU runs the
/// old instruction once this returns.
pub fn publish() -> Result<(), PokeError> {
    with_manager!(m => m.publish())
}
