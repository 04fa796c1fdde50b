//! The module loader on the hardware, in every boot mode: two modules built from tests/modules
//! (one calls kernel exports, the other calls the first) load, run and unload in order; the
//! assembly module that uses every relocation type gives the addresses each must produce; module
//! code shares a pack with JIT'd slots; rodata and data are never executable and rodata is
//! read-only; every bad input is refused with nothing left allocated; the audit stays clean.

#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;

use execmem::fault::ExceptionClass;
use execmem::mmu::Permissions;
use execmem::module::reloc::{RelocError, RelocKind};
use execmem::module::{LoadError, ModuleId, Segment, UnloadError};
use execmem::runtime::fault::{Resume, catch};
use execmem::runtime::modules::{self, SMALL_VALUE};
use execmem::runtime::{self, exec_pool, mmu, slot};
use execmem::{println, tests};

execmem::entry!(main);

const HELLO: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/modules/hello.o"));
const USER: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/modules/user.o"));
const RELOCS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/modules/relocs.o"));
const BULK: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/modules/bulk.o"));

fn main() {
    runtime::testing::run(
        "module",
        tests![
            two_modules_load_call_and_unload_in_order,
            every_relocation_produces_its_address,
            module_text_shares_a_pack_with_jit_slots,
            a_module_of_sixteen_pages_of_code_runs_through_all_of_it,
            module_data_is_never_executable_and_rodata_is_read_only,
            bad_modules_are_refused_with_nothing_left,
            audit_is_clean_at_the_end,
        ],
    );
}

fn load(name: &str, file: &[u8]) -> Result<ModuleId, LoadError> {
    // SAFETY: the test modules are this repository's own, built with the kernel.
    unsafe { modules::load(name, file) }
}

fn unload(id: ModuleId) -> Result<(), UnloadError> {
    // SAFETY: no CPU runs the module's code once the test's calls returned.
    unsafe { modules::unload(id) }
}

fn symbol(name: &str) -> u64 {
    modules::symbol(name).unwrap_or_else(|| panic!("{name} is exported"))
}

fn call0(name: &str) -> u64 {
    // SAFETY: every function the tests call this way is `extern "C" fn() -> u64` in its module.
    let f: extern "C" fn() -> u64 = unsafe { core::mem::transmute(symbol(name) as usize) };
    f()
}

fn call2(name: &str, a: u64, b: u64) -> u64 {
    // SAFETY: as `call0`, for `extern "C" fn(u64, u64) -> u64`.
    let f: extern "C" fn(u64, u64) -> u64 = unsafe { core::mem::transmute(symbol(name) as usize) };
    f(a, b)
}

fn call1(name: &str, a: u64) -> u64 {
    // SAFETY: as `call0`, for `extern "C" fn(u64) -> u64`.
    let f: extern "C" fn(u64) -> u64 = unsafe { core::mem::transmute(symbol(name) as usize) };
    f(a)
}

/// What a load or unload could leave behind: exec slots and bytes, data pages, modules.
#[derive(Debug, PartialEq, Eq)]
struct Held {
    slots: u64,
    bytes: u64,
    data_pages: usize,
    modules: usize,
    live: [usize; 3],
}

fn held() -> Held {
    let stats = slot::stats();
    Held {
        slots: stats.live_slots,
        bytes: stats.bytes_live,
        data_pages: modules::free_data_pages(),
        modules: modules::loaded().len(),
        live: modules::live_bytes(),
    }
}

fn assert_audit_clean() {
    let violations = exec_pool::audit();
    for v in &violations {
        println!("  violation: {v}");
    }
    assert!(violations.is_empty(), "{} violations", violations.len());
}

fn two_modules_load_call_and_unload_in_order() {
    let before = held();
    modules::take_events();
    let hello = load("hello", HELLO).expect("hello loads");
    assert_eq!(modules::take_events(), [1], "hello's init ran once");
    assert_eq!(call2("hello_add", 2, 3), 6, "hello_add calls kernel_add");
    assert_eq!(call0("hello_count"), 1);
    assert_eq!(call0("hello_count"), 2);
    assert_eq!(call0("hello_data"), 0x1111_2222_3333_4444);
    assert_eq!(call0("hello_greeting_len"), 20);
    assert_eq!(
        call0("hello_greeting_first") as u8,
        b'g',
        "rodata reached through .data.rel.ro"
    );
    assert_audit_clean();

    let user = load("user", USER).expect("user loads against hello");
    assert_eq!(modules::take_events(), [3]);
    assert_eq!(call1("user_calls_hello", 5), 16, "user -> hello -> kernel");
    assert_eq!(call0("user_count_twice"), 4, "hello's counter is shared");
    let m = modules::loaded();
    assert_eq!(m[1].uses(), [hello]);
    println!(
        "  hello: text {:#x}+{}, rodata {:#x}+{}, data {:#x}+{}; user uses hello",
        m[0].segment(Segment::Text).0,
        m[0].segment(Segment::Text).1,
        m[0].segment(Segment::Rodata).0,
        m[0].segment(Segment::Rodata).1,
        m[0].segment(Segment::Data).0,
        m[0].segment(Segment::Data).1,
    );

    assert_eq!(unload(hello), Err(UnloadError::InUse { by: user }));
    assert_eq!(
        call2("hello_add", 1, 1),
        3,
        "hello still works after the refusal"
    );
    assert!(modules::take_events().is_empty(), "no exit ran");
    unload(user).expect("user unloads");
    assert_eq!(modules::take_events(), [4]);
    unload(hello).expect("hello unloads once user is gone");
    assert_eq!(modules::take_events(), [2]);
    assert_eq!(unload(hello), Err(UnloadError::NotLoaded(hello)));
    assert!(modules::symbol("hello_add").is_none());
    assert_eq!(held(), before, "everything given back");
    assert_audit_clean();
}

fn every_relocation_produces_its_address() {
    let before = held();
    let id = load("relocs", RELOCS).expect("relocs loads");
    let data = symbol("reloc_target_data");
    let text = symbol("reloc_target_text");
    let checks: &[(&str, u64, &str)] = &[
        ("reloc_call26", 0xca26, "CALL26"),
        ("reloc_call26_kernel", 0x4042, "CALL26 to the kernel"),
        ("reloc_jump26", 0x1a26, "JUMP26"),
        ("reloc_condbr19", 0xc019, "CONDBR19"),
        ("reloc_tstbr14", 0x7b14, "TSTBR14"),
        ("reloc_adr", text, "ADR_PREL_LO21"),
        ("reloc_adrp", data & !0xfff, "ADR_PREL_PG_HI21"),
        ("reloc_adrp_nc", data & !0xfff, "ADR_PREL_PG_HI21_NC"),
        ("reloc_adrp_add", data, "ADD_ABS_LO12_NC"),
        ("reloc_ldst8", 0xa8, "LDST8_ABS_LO12_NC"),
        ("reloc_ldst16", 0xa516, "LDST16_ABS_LO12_NC"),
        ("reloc_ldst32", 0xa532_3232, "LDST32_ABS_LO12_NC"),
        ("reloc_ldst64", 0xa564_6464_6464_6464, "LDST64_ABS_LO12_NC"),
        (
            "reloc_ldst128",
            0x1281_1281_1280_1280,
            "LDST128_ABS_LO12_NC",
        ),
        (
            "reloc_movw_g3",
            data + 0x1234_5678_0000_0000,
            "MOVW_UABS_G3, G2_NC, G1_NC, G0_NC",
        ),
        (
            "reloc_movw_g2",
            data + 0x0000_0abc_0000_0000,
            "MOVW_UABS_G2",
        ),
        ("reloc_movw_g1", data, "MOVW_UABS_G1"),
        ("reloc_movw_g0", SMALL_VALUE, "MOVW_UABS_G0"),
        ("reloc_target_text", 0x7e47, "(the ADR target)"),
    ];
    for &(name, expected, what) in checks {
        let got = call0(name);
        assert_eq!(
            got, expected,
            "{name} ({what}): {got:#x}, expected {expected:#x}"
        );
    }
    // SAFETY: each word is at an exported address of the loaded module's rodata or data, read
    // with its width.
    let word = |name: &str, width: usize| -> (u64, u64) {
        let at = symbol(name);
        let value = unsafe {
            match width {
                8 => core::ptr::read_volatile(at as *const u64),
                4 => u64::from(core::ptr::read_volatile(at as *const u32)),
                _ => u64::from(core::ptr::read_volatile(at as *const u16)),
            }
        };
        (at, value)
    };
    assert_eq!(word("reloc_data_abs64", 8).1, data, "ABS64");
    assert_eq!(word("reloc_data_abs32", 4).1, data, "ABS32");
    assert_eq!(word("reloc_data_abs16", 2).1, SMALL_VALUE, "ABS16");
    let (at, v) = word("reloc_data_prel64", 8);
    assert_eq!(at.wrapping_add(v), data, "PREL64");
    let (at, v) = word("reloc_data_prel32", 4);
    assert_eq!(at.wrapping_add(v as u32 as i32 as u64), data, "PREL32");
    let (at, v) = word("reloc_data_prel16", 2);
    assert_eq!(
        at.wrapping_add(v as u16 as i16 as u64),
        symbol("reloc_prel16_target"),
        "PREL16"
    );
    let (at, _) = word("reloc_data_abs64_local", 8);
    // SAFETY: the word holds the address of an 8-byte value in the module's rodata.
    let local = unsafe {
        core::ptr::read_volatile(core::ptr::read_volatile(at as *const u64) as *const u64)
    };
    assert_eq!(
        local, 0xa564_6464_6464_6464,
        "ABS64 against a section symbol"
    );
    let m = modules::loaded();
    println!(
        "  {} relocations of {} kinds applied and checked",
        m[0].relocations(),
        RelocKind::ALL.len() - 1
    );
    unload(id).expect("relocs unloads");
    assert_eq!(held(), before);
}

fn module_text_shares_a_pack_with_jit_slots() {
    let jit = slot::alloc(256).expect("a JIT slot");
    let hello = load("hello", HELLO).expect("hello loads");
    let text = modules::loaded()[0].segment(Segment::Text).0;
    assert_eq!(
        text >> 21,
        jit.addr() >> 21,
        "module text {text:#x} and JIT slot {:#x} share a 2 MiB pack",
        jit.addr()
    );
    let info = slot::slot_at(text).expect("the module's text is a slot");
    assert_eq!(info.addr, text);
    unload(hello).unwrap();
    slot::free(jit).unwrap();
}

fn a_module_of_sixteen_pages_of_code_runs_through_all_of_it() {
    let before = held();
    let id = load("bulk", BULK).expect("bulk loads");
    let (text, size) = modules::loaded()[0].segment(Segment::Text);
    assert_eq!(size, 64 << 10);
    println!("  bulk: text {text:#x}..{:#x}", text + size as u64);
    assert_eq!(
        call0("bulk_entry"),
        0xb01c,
        "16,382 NOPs and the return, every page written"
    );
    unload(id).unwrap();
    assert_eq!(held(), before);
}

fn module_data_is_never_executable_and_rodata_is_read_only() {
    let hello = load("hello", HELLO).expect("hello loads");
    let m = modules::loaded();
    let m = &m[0];
    for segment in [Segment::Rodata, Segment::Data] {
        let (addr, size) = m.segment(segment);
        assert!(size > 0, "hello has {}", segment.name());
        for page in (addr..addr + size as u64).step_by(4096) {
            let p = permissions_at(page).expect("mapped");
            assert!(!p.exec, "{} page {page:#x} is XN", segment.name());
            assert_eq!(
                p.write,
                segment == Segment::Data,
                "{} page {page:#x}: {p}",
                segment.name(),
            );
        }
    }
    let (rodata, _) = m.segment(Segment::Rodata);
    let report = catch(Resume::Skip, || {
        // SAFETY: the store is expected to fault (rodata is read-only); `catch` skips it.
        unsafe { core::ptr::write_volatile(rodata as *mut u8, 0) };
    })
    .expect("a store to module rodata faults");
    assert_eq!(report.class(), ExceptionClass::DataAbort);
    let (text, _) = m.segment(Segment::Text);
    assert!(permissions_at(text).is_some_and(|p| p.exec && !p.write));
    assert_audit_clean();
    unload(hello).unwrap();
    // Unloaded: its data pages are mapped nowhere.
    let (data, _) = m.segment(Segment::Data);
    assert!(
        mmu::translate(data).is_none(),
        "freed module data is unmapped"
    );
}

/// The permissions the live tables give `va`.
fn permissions_at(va: u64) -> Option<Permissions> {
    mmu::live_runs()
        .into_iter()
        .find(|r| r.va <= va && va < r.va + r.size)
        .map(|r| r.permissions)
}

/// Byte offset in `file` of the first relocation of `kind` applied to an allocated section.
fn find_rela(file: &[u8], kind: RelocKind) -> usize {
    use object::read::elf::{FileHeader, SectionHeader};
    let e = object::LittleEndian;
    let mut copy = alloc::vec![0u64; file.len().div_ceil(8)];
    // SAFETY: `copy` has room for the file's bytes.
    let data = unsafe {
        let bytes = core::slice::from_raw_parts_mut(copy.as_mut_ptr().cast::<u8>(), file.len());
        bytes.copy_from_slice(file);
        core::slice::from_raw_parts(copy.as_ptr().cast::<u8>(), file.len())
    };
    let header = object::elf::FileHeader64::<object::LittleEndian>::parse(data).unwrap();
    let sections = header.sections(e, data).unwrap();
    for s in sections.iter() {
        let Ok(Some((relas, _))) = s.rela(e, data) else {
            continue;
        };
        for (i, r) in relas.iter().enumerate() {
            if r.r_type(e, false).0 == kind.elf_type() {
                return s.sh_offset(e) as usize + i * 24;
            }
        }
    }
    panic!("no {kind} relocation");
}

/// A corrupted module: what it is, its bytes, the error it must get.
type BadCase = (&'static str, Vec<u8>, fn(&LoadError) -> bool);

fn bad_modules_are_refused_with_nothing_left() {
    let before = held();
    let patched = |at: usize, bytes: &[u8]| {
        let mut f = HELLO.to_vec();
        f[at..at + bytes.len()].copy_from_slice(bytes);
        f
    };
    let call26 = find_rela(HELLO, RelocKind::Call26);
    let mut cases: Vec<BadCase> = alloc::vec![
        (
            "not ELF",
            b"not an ELF file at all, just text".to_vec(),
            |e| *e == LoadError::NotElf
        ),
        ("ELFCLASS32", patched(4, &[1]), |e| *e
            == LoadError::WrongClass { found: 1 }),
        ("big-endian", patched(5, &[2]), |e| *e
            == LoadError::WrongByteOrder { found: 2 }),
        ("x86-64", patched(18, &62u16.to_le_bytes()), |e| *e
            == LoadError::WrongMachine { found: 62 }),
        ("ET_EXEC", patched(16, &2u16.to_le_bytes()), |e| *e
            == LoadError::NotRelocatable { found: 2 }),
        (
            "sections outside",
            patched(0x28, &(1u64 << 40).to_le_bytes()),
            |e| { *e == LoadError::SectionTableOutsideFile }
        ),
        (
            "symbol outside",
            patched(call26 + 12, &0x00ff_ffffu32.to_le_bytes()),
            |e| { matches!(e, LoadError::SymbolOutsideFile { .. }) }
        ),
        (
            "unknown relocation",
            patched(call26 + 8, &1000u32.to_le_bytes()),
            |e| { matches!(e, LoadError::UnknownRelocation { r_type: 1000, .. }) }
        ),
        (
            "relocation outside",
            patched(call26, &0x7fff_0000u64.to_le_bytes()),
            |e| { matches!(e, LoadError::RelocationOutsideSection { .. }) }
        ),
        (
            "branch out of range",
            patched(call26 + 16, &(1i64 << 28).to_le_bytes()),
            |e| {
                matches!(
                    e,
                    LoadError::BadRelocation {
                        error: RelocError::OutOfRange {
                            kind: RelocKind::Call26,
                            ..
                        },
                        ..
                    }
                )
            }
        ),
    ];
    // A section whose contents lie outside the file: the first PROGBITS section's offset.
    cases.push(("a section outside", section_outside(HELLO), |e| {
        matches!(e, LoadError::SectionOutsideFile { .. })
    }));
    // Too large: a bss past every limit (the size of the first NOBITS section).
    cases.push(("too large", huge_bss(HELLO), |e| {
        matches!(
            e,
            LoadError::TooLarge {
                segment: Some(Segment::Data),
                ..
            }
        )
    }));
    for (what, file, expected) in &cases {
        let error = load("bad", file).expect_err(what);
        println!("  {what}: {error}");
        assert!(expected(&error), "{what}: unexpected {error:?}");
        assert_eq!(held(), before, "{what}: nothing left allocated");
    }
    // Unresolved: user without hello.
    let error = load("user", USER).expect_err("user needs hello");
    println!("  user without hello: {error}");
    assert!(matches!(error, LoadError::Unresolved { .. }), "{error:?}");
    assert_eq!(held(), before);
    // Duplicate: hello's symbols under another name, and the same name twice.
    let hello = load("hello", HELLO).expect("hello loads");
    let with_hello = held();
    let error = load("hello 2", HELLO).expect_err("hello's symbols are taken");
    println!("  hello twice: {error}");
    assert!(
        matches!(error, LoadError::DuplicateSymbol { .. }),
        "{error:?}"
    );
    assert_eq!(load("hello", USER), Err(LoadError::NameTaken));
    assert_eq!(held(), with_hello);
    unload(hello).unwrap();
    assert_eq!(held(), before);
    assert_audit_clean();
}

/// `file` with its first PROGBITS section's contents moved past the end of the file.
fn section_outside(file: &[u8]) -> Vec<u8> {
    let shoff = u64::from_le_bytes(file[0x28..0x30].try_into().unwrap()) as usize;
    let shnum = u16::from_le_bytes(file[0x3c..0x3e].try_into().unwrap()) as usize;
    let mut f = file.to_vec();
    for i in 1..shnum {
        let at = shoff + i * 64;
        let size = u64::from_le_bytes(f[at + 32..at + 40].try_into().unwrap());
        if u32::from_le_bytes(f[at + 4..at + 8].try_into().unwrap()) == 1 && size > 0 {
            f[at + 24..at + 32].copy_from_slice(&(file.len() as u64).to_le_bytes());
            return f;
        }
    }
    panic!("the module has no PROGBITS section");
}

/// `file` with its first NOBITS section grown to 1 GiB.
fn huge_bss(file: &[u8]) -> Vec<u8> {
    let shoff = u64::from_le_bytes(file[0x28..0x30].try_into().unwrap()) as usize;
    let shnum = u16::from_le_bytes(file[0x3c..0x3e].try_into().unwrap()) as usize;
    let mut f = file.to_vec();
    for i in 0..shnum {
        let at = shoff + i * 64;
        if u32::from_le_bytes(f[at + 4..at + 8].try_into().unwrap()) == 8 {
            f[at + 32..at + 40].copy_from_slice(&(1u64 << 30).to_le_bytes());
            return f;
        }
    }
    panic!("the module has no bss");
}

fn audit_is_clean_at_the_end() {
    assert!(modules::loaded().is_empty());
    assert_audit_clean();
}
