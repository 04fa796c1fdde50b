//! The execmem demo kernel (`make run`): boots, prints the boot report and the address space,
//! JITs a few functions into an exec pack through the text poke, calls them, patches one live the
//! way ftrace does (NOP → B), loads two kernel modules (one calling the other) into the same
//! packs as BPF-sized JIT'd programs, and ends with the page-table audit.

#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]

#[cfg(target_os = "none")]
mod demo {
    use execmem::bench::workload::{Rng, bpf_size};
    use execmem::layout::Size;
    use execmem::module::{ModuleId, Segment};
    use execmem::poke::insn::{self, CodeBuf, W0};
    use execmem::println;
    use execmem::runtime::slot::{self, ExecSlot};
    use execmem::runtime::{exec_pool, memory, mmu, modules, poke, report};

    const HELLO: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/modules/hello.o"));
    const USER: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/modules/user.o"));

    fn main() {
        report::print_boot_report();
        jit_demo();
        let loaded = load_modules();
        slot_workload();
        unload_modules(loaded);
        let violations = exec_pool::audit();
        println!("audit: {} violations", violations.len());
        for violation in &violations {
            println!("  {violation}");
        }
    }

    /// A kernel function JIT code reaches with one branch.
    extern "C" fn triple(x: u32) -> u32 {
        x * 3
    }

    fn call(addr: u64) -> u32 {
        // SAFETY: only called on addresses where a complete function was just written.
        let f: extern "C" fn() -> u32 = unsafe { core::mem::transmute(addr as usize) };
        f()
    }

    fn show(name: &str, code: &CodeBuf) {
        let listing: alloc::vec::Vec<&str> =
            code.words().iter().map(|w| insn::mnemonic(*w)).collect();
        println!(
            "  {name} @ {:#x}: {} ({} B)",
            code.base(),
            listing.join("; "),
            code.len_bytes()
        );
    }

    extern crate alloc;

    fn jit_demo() {
        let pack = memory::plan().exec_pool.start;
        if let Err(e) = exec_pool::map_pack(pack) {
            println!("jit: cannot map a pack: {e}");
            return;
        }
        println!(
            "jit: pack {pack:#x} mapped RX as one 2 MiB block, backed by frame {:#x}, filled with BRK",
            exec_pool::exec_pa(pack).unwrap_or(0)
        );
        println!("jit: cache maintenance: {}", exec_pool::maintenance_plan());

        let mut answer = CodeBuf::new(pack);
        answer.push(insn::movz(W0, 42, 0).expect("movz"));
        answer.push(insn::ret());

        // Tail call into the kernel: one B reaches kernel text from the pool (±128 MiB).
        let mut tail = CodeBuf::new(pack + 0x40);
        tail.push(insn::movz(W0, 14, 0).expect("movz"));
        tail.push_b(triple as extern "C" fn(u32) -> u32 as usize as u64)
            .expect("kernel text is within one branch");

        // A traced function: its first instruction is a NOP an ftrace-style patch turns into B.
        let mut traced = CodeBuf::new(pack + 0x80);
        traced.push(insn::nop());
        traced.push(insn::movz(W0, 1, 0).expect("movz"));
        traced.push(insn::ret());
        let mut tracer = CodeBuf::new(pack + 0xc0);
        tracer.push(insn::movz(W0, 1000, 0).expect("movz"));
        tracer.push(insn::ret());

        for (name, code) in [
            ("answer", &answer),
            ("tail call", &tail),
            ("traced", &traced),
            ("tracer", &tracer),
        ] {
            if let Err(e) = poke::text_copy(code.base(), &code.as_bytes()) {
                println!("jit: text_copy of {name} failed: {e}");
                return;
            }
            show(name, code);
        }
        println!(
            "jit: answer() = {}, tail call: triple(14) = {}, traced() = {}",
            call(answer.base()),
            call(tail.base()),
            call(traced.base())
        );

        let branch = insn::b(traced.base(), tracer.base()).expect("branch in range");
        match poke::patch_insn(traced.base(), insn::nop(), branch) {
            Ok(()) => println!(
                "jit: patched {:#x} live: NOP -> {} (CMODX pair, one aligned store)",
                traced.base(),
                insn::mnemonic(branch)
            ),
            Err(e) => println!("jit: patch failed: {e}"),
        }
        println!(
            "jit: traced() = {} (redirected to tracer)",
            call(traced.base())
        );
        if poke::patch_insn(traced.base(), branch, insn::nop()).is_ok() {
            println!("jit: unpatched: traced() = {}", call(traced.base()));
        }
        println!(
            "jit: {} alias mappings, each removed with a broadcast TLBI; fixmap idle",
            poke::alias_maps()
        );
        if let Err(e) = exec_pool::unmap_pack(pack) {
            println!("jit: unmap failed: {e}");
        }
    }

    /// Loads `hello` (calls kernel exports) and `user` (calls hello), calls them, and shows where
    /// their segments went.
    fn load_modules() -> alloc::vec::Vec<ModuleId> {
        let mut loaded = alloc::vec::Vec::new();
        for (name, file) in [("hello", HELLO), ("user", USER)] {
            // SAFETY: the demo's modules are built from tests/modules with the kernel.
            match unsafe { modules::load(name, file) } {
                Ok(id) => loaded.push(id),
                Err(e) => {
                    println!("modules: {name} refused: {e}");
                    return loaded;
                }
            }
        }
        for m in modules::loaded() {
            let mut parts = alloc::vec::Vec::new();
            for (segment, rights) in [
                (Segment::Text, "RX, in pack"),
                (Segment::Rodata, "RO, XN"),
                (Segment::Data, "RW, XN"),
            ] {
                let (addr, size) = m.segment(segment);
                if size > 0 {
                    let pack = if segment == Segment::Text {
                        alloc::format!(" {:#x}", addr & !0x1f_ffff)
                    } else {
                        alloc::string::String::new()
                    };
                    parts.push(alloc::format!(
                        "{} {addr:#x}+{size} ({rights}{pack})",
                        segment.name()
                    ));
                }
            }
            let exports: alloc::vec::Vec<&str> =
                m.exports().iter().map(|(n, _)| n.as_str()).collect();
            println!(
                "modules: {} loaded, {} relocations: {}; exports {}",
                m.name(),
                m.relocations(),
                parts.join(", "),
                exports.join(", ")
            );
        }
        if let Some(addr) = modules::symbol("user_calls_hello") {
            // SAFETY: `user_calls_hello` is `extern "C" fn(u64) -> u64` in the loaded `user`.
            let f: extern "C" fn(u64) -> u64 = unsafe { core::mem::transmute(addr as usize) };
            println!(
                "modules: user_calls_hello(5) = {} (user -> hello -> kernel_add, +1, +10)",
                f(5)
            );
        }
        loaded
    }

    /// Unloads in reverse order (hello first is refused: user uses it).
    fn unload_modules(loaded: alloc::vec::Vec<ModuleId>) {
        if let Some(&first) = loaded.first() {
            // SAFETY: no CPU runs module code now.
            if let Err(e) = unsafe { modules::unload(first) } {
                println!("modules: unloading hello first is refused: {e}");
            }
        }
        for id in loaded.into_iter().rev() {
            // SAFETY: as above.
            if let Err(e) = unsafe { modules::unload(id) } {
                println!("modules: unload failed: {e}");
            }
        }
        println!(
            "modules: all unloaded; live bytes (text, rodata, data) {:?}",
            modules::live_bytes()
        );
    }

    /// 600 programs of BPF sizes, each JIT'd and called, then a third freed and 200 more added:
    /// the allocator's pack map and statistics afterwards.
    fn slot_workload() {
        let mut rng = Rng::new(2026);
        let mut live: alloc::vec::Vec<(ExecSlot, u16)> = alloc::vec::Vec::new();
        let add = |live: &mut alloc::vec::Vec<(ExecSlot, u16)>, rng: &mut Rng, id: u16| -> bool {
            let slot = match slot::alloc(bpf_size(rng)) {
                Ok(slot) => slot,
                Err(e) => {
                    println!("slots: alloc failed: {e}");
                    return false;
                }
            };
            let mut code = CodeBuf::new(slot.addr());
            code.push(insn::movz(W0, id, 0).expect("movz"));
            code.push(insn::ret());
            if let Err(e) = slot::write(&slot, 0, &code.as_bytes()) {
                println!("slots: write failed: {e}");
                return false;
            }
            live.push((slot, id));
            true
        };
        for id in 0..600 {
            if !add(&mut live, &mut rng, id) {
                return;
            }
        }
        for _ in 0..200 {
            let victim = rng.below(live.len() as u64) as usize;
            let (slot, _) = live.swap_remove(victim);
            if let Err(e) = slot::free(slot) {
                println!("slots: free failed: {e}");
            }
        }
        for id in 600..800 {
            if !add(&mut live, &mut rng, id) {
                return;
            }
        }
        let wrong = live
            .iter()
            .filter(|(slot, id)| call(slot.addr()) != u32::from(*id))
            .count();
        let stats = slot::stats();
        println!(
            "slots: 800 BPF-sized programs JIT'd, 200 freed at random; {} live, all called: {} wrong results",
            live.len(),
            wrong
        );
        println!(
            "slots: {} packs mapped, {} reserved, {} live ({}% dense), {} allocations, {} frees",
            stats.packs_mapped,
            Size(stats.bytes_reserved as u64),
            Size(stats.bytes_live as u64),
            stats.bytes_live * 100 / stats.bytes_reserved.max(1),
            stats.allocations,
            stats.frees
        );
        println!(
            "slots: pack map (one character per 32 KiB: ' ' empty, '.' <1/3, ':' <2/3, '+' more, '#' full):"
        );
        let mut map = alloc::string::String::new();
        let _ = slot::render_pack_map(&mut map);
        for line in map.lines() {
            println!("  {line}");
        }
        mmu::print_layout();
        let violations = exec_pool::audit();
        println!(
            "slots: audit with {} packs live: {} violations",
            exec_pool::live_packs().len(),
            violations.len()
        );
        for (slot, _) in live {
            let _ = slot::free(slot);
        }
    }

    execmem::entry!(main);
}

/// On the host this binary only points at the real thing.
#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!(
        "execmem is a bare-metal kernel: run it with `make run` (QEMU) or `make image` (SD card)."
    );
}
