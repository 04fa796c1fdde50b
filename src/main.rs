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
    use execmem::probe::decode::Regs;
    use execmem::runtime::slot::{self, ExecSlot};
    use execmem::runtime::{exec_pool, memory, mmu, modules, poke, probe, report, trace};

    const HELLO: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/modules/hello.o"));
    const USER: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/modules/user.o"));

    fn main() {
        report::print_boot_report();
        jit_demo();
        one_block_for_every_user();
        slot_workload();
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
            "jit: {} alias mappings, each in this CPU's own view only and removed with a local TLBI; fixmap idle",
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

    /// Who owns a slot, in the pack map.
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum User {
        Module,
        Trampoline,
        Probe,
        Jit,
    }

    impl User {
        const ALL: [User; 4] = [User::Module, User::Trampoline, User::Probe, User::Jit];

        fn letter(self) -> char {
            match self {
                User::Module => 'M',
                User::Trampoline => 'T',
                User::Probe => 'P',
                User::Jit => 'J',
            }
        }

        fn name(self) -> &'static str {
            match self {
                User::Module => "module text",
                User::Trampoline => "trace trampolines",
                User::Probe => "probe out-of-line slots",
                User::Jit => "JIT'd BPF programs",
            }
        }
    }

    macro_rules! demo_traceable {
        ($($name:ident = $k:literal),*) => {
            $(execmem::traceable! {
                /// A kernel function the demo traces.
                extern "C" fn $name(x: u64) -> u64 { x.wrapping_mul($k) }
            })*
            const TRACED: &[(&str, extern "C" fn(u64) -> u64, u64)] = &[$((stringify!($name), $name, $k)),*];
        };
    }
    demo_traceable!(
        vfs_read = 2,
        vfs_write = 3,
        tcp_sendmsg = 5,
        tcp_recvmsg = 7,
        do_sys_open = 11,
        schedule = 13,
        kmalloc = 17,
        kfree = 19
    );

    /// Probed kernel code: an ordinary instruction (out of line) and a branch (simulated).
    #[unsafe(naked)]
    extern "C" fn probed_add(x: u64) -> u64 {
        core::arch::naked_asm!(
            "add x0, x0, #40",
            "b 1f",
            "mov x0, #0",
            "1: add x0, x0, #2",
            "ret"
        )
    }

    static TRACER_CALLS: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
    static PROBE_HITS: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

    extern "C" fn tracer(_function: u64, _args: &[u64; 8], _cookie: u64) {
        TRACER_CALLS.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    }

    fn on_probe(_regs: &mut Regs, _cookie: u64) {
        PROBE_HITS.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    }

    /// The picture the design is for: two modules, traced functions, probes and BPF-sized JIT'd
    /// programs, all in one 2 MiB exec block; then all of it removed and the pack released.
    fn one_block_for_every_user() {
        use core::sync::atomic::Ordering::Relaxed;
        println!(
            "users: modules, ftrace trampolines, kprobes and JIT'd programs in the same packs"
        );
        let loaded = load_modules();
        for &(name, f, _) in TRACED {
            if let Err(e) = trace::trace(f as *const () as u64, tracer, 0) {
                println!("users: trace {name}: {e}");
            }
        }
        let wrong = TRACED.iter().filter(|&&(_, f, k)| f(10) != 10 * k).count();
        println!(
            "users: {} functions traced (NOP -> B to a {}-byte trampoline each), called: {} tracer calls, {wrong} wrong results",
            trace::traced().len(),
            execmem::trace::TRAMPOLINE_BYTES,
            TRACER_CALLS.load(Relaxed)
        );
        let site = probed_add as *const () as u64;
        for at in [site, site + 4] {
            if let Err(e) = probe::add(at, on_probe, 0) {
                println!("users: probe {at:#x}: {e}");
            }
        }
        println!(
            "users: probes on `add` (out of line) and `b` (simulated) at {site:#x}: probed_add(1) = {} (unprobed 43), {} hits",
            probed_add(1),
            PROBE_HITS.load(Relaxed)
        );
        let mut rng = Rng::new(7);
        let mut jit: alloc::vec::Vec<ExecSlot> = alloc::vec::Vec::new();
        for id in 0..300u16 {
            let Ok(slot) = slot::alloc(bpf_size(&mut rng)) else {
                break;
            };
            let mut code = CodeBuf::new(slot.addr());
            code.push(insn::movz(W0, id, 0).expect("movz"));
            code.push(insn::ret());
            if slot::write(&slot, 0, &code.as_bytes()).is_ok() {
                jit.push(slot);
            }
        }
        let wrong = jit
            .iter()
            .enumerate()
            .filter(|(id, s)| call(s.addr()) != *id as u32)
            .count();
        println!(
            "users: {} BPF-sized programs JIT'd and called: {wrong} wrong results",
            jit.len()
        );

        // Who owns what, from the users' own records.
        let mut owned: alloc::vec::Vec<(u64, usize, User)> = alloc::vec::Vec::new();
        for m in modules::loaded() {
            let (addr, size) = m.segment(Segment::Text);
            if size > 0 {
                owned.push((addr, size, User::Module));
            }
        }
        for t in trace::traced() {
            owned.push((
                t.trampoline,
                execmem::trace::TRAMPOLINE_BYTES,
                User::Trampoline,
            ));
        }
        for (_, xol, size) in probe::out_of_line_slots() {
            owned.push((xol, size, User::Probe));
        }
        for s in &jit {
            owned.push((s.addr(), s.size(), User::Jit));
        }
        // The exec blocks, from the live tables the hardware walks.
        let blocks: alloc::vec::Vec<_> = mmu::live_runs()
            .into_iter()
            .filter(|r| r.role == Some(execmem::mmu::Role::ExecPool))
            .collect();
        for b in &blocks {
            println!(
                "users: exec block {:#x}..{:#x} ({}, {} x {} leaf, {}) -> PA {:#x}",
                b.va,
                b.va + b.size,
                Size(b.size),
                b.size / b.leaf_size,
                Size(b.leaf_size),
                b.permissions,
                b.pa
            );
        }
        let inside = owned
            .iter()
            .filter(|(a, s, _)| {
                blocks
                    .iter()
                    .any(|b| *a >= b.va && a + *s as u64 <= b.va + b.size)
            })
            .count();
        println!(
            "users: {} of {} slots lie in {} exec block(s) of the live tables",
            inside,
            owned.len(),
            blocks.len()
        );
        for user in User::ALL {
            let (n, bytes) = owned
                .iter()
                .filter(|o| o.2 == user)
                .fold((0, 0), |(n, b), o| (n + 1, b + o.1));
            println!(
                "  {} {:<24} {n:>4} slots, {:>9} live",
                user.letter(),
                user.name(),
                alloc::format!("{}", Size(bytes as u64))
            );
        }
        println!(
            "users: pack map, one character per 2 KiB: M, T or P if a module, trampoline or probe slot is there, else J for JIT'd code, '.' free:"
        );
        const CELL: u64 = 2 << 10;
        for b in &blocks {
            for line in 0..b.size / (64 * CELL) {
                let row: alloc::string::String = (0..64)
                    .map(|col| {
                        let start = b.va + (line * 64 + col) * CELL;
                        let end = start + CELL;
                        User::ALL
                            .into_iter()
                            .find(|&u| {
                                owned
                                    .iter()
                                    .any(|&(a, s, o)| o == u && a < end && a + s as u64 > start)
                            })
                            .map_or('.', User::letter)
                    })
                    .collect();
                println!("  {:#x} {row}", b.va + line * 64 * CELL);
            }
            // The small users up close: the 4 KiB holding most module, trampoline and probe
            // slots, one character per 64-byte chunk.
            let small = |page: u64| {
                owned
                    .iter()
                    .filter(|o| o.2 != User::Jit && o.0 >> 12 == page)
                    .count()
            };
            let page = (b.va >> 12..(b.va + b.size) >> 12).max_by_key(|&p| small(p));
            if let Some(page) = page.filter(|&p| small(p) > 0) {
                let row: alloc::string::String = (0..64)
                    .map(|chunk| {
                        let at = (page << 12) + chunk * 64;
                        owned
                            .iter()
                            .find(|&&(a, s, _)| a < at + 64 && a + s as u64 > at)
                            .map_or('.', |o| o.2.letter())
                    })
                    .collect();
                println!(
                    "  {:#x} {row}  (4 KiB, one character per 64-byte chunk)",
                    page << 12
                );
            }
        }
        let violations = exec_pool::audit();
        println!(
            "users: audit with everything live: {} violations",
            violations.len()
        );

        for s in jit {
            let _ = slot::free(s);
        }
        for at in probe::probed() {
            if let Err(e) = probe::remove(at) {
                println!("users: remove probe: {e}");
            }
        }
        for t in trace::traced() {
            if let Err(e) = trace::untrace(t.function) {
                println!("users: untrace: {e}");
            }
        }
        unload_modules(loaded);
        let _ = slot::trim();
        println!(
            "users: all removed: {} trampolines and {} probes left, {} live slots, {} packs mapped",
            trace::traced().len() + trace::reap(),
            probe::probed().len() + probe::reap(),
            slot::stats().live_slots,
            exec_pool::live_packs().len()
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
