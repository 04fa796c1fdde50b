//! The loader on the host, over a model space that records every allocation: the test modules
//! (built from tests/modules by build.rs) load, link and unload; every bad input is refused with
//! its error and nothing left allocated; random corruption never panics.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use super::*;

/// Where the model puts each segment kind, near a pretend kernel at 0x4008_0000.
const BASES: [u64; 3] = [0x4400_0000, 0x4800_0000, 0x4a00_0000];
const KERNEL: u64 = 0x4008_0000;

/// A space that hands out addresses from a bump pointer per segment, keeps what was filled, and
/// records the calls into module code.
#[derive(Default)]
struct ModelSpace {
    next: [u64; 3],
    live: BTreeMap<(usize, u64), usize>,
    filled: BTreeMap<(usize, u64), Vec<u8>>,
    calls: Vec<(&'static str, u64)>,
    init_result: i32,
    fail_alloc: Option<Segment>,
    fail_fill: Option<Segment>,
}

impl ModelSpace {
    fn new() -> Self {
        Self {
            next: BASES,
            ..Self::default()
        }
    }

    /// The filled bytes at `addr` of `segment`.
    fn bytes_at(&self, segment: Segment, addr: u64, len: usize) -> Option<&[u8]> {
        self.filled.iter().find_map(|(&(s, base), image)| {
            let off = addr.checked_sub(base)? as usize;
            (s == segment.index() && off + len <= image.len()).then(|| &image[off..off + len])
        })
    }
}

impl ModuleSpace for ModelSpace {
    fn alloc(&mut self, segment: Segment, size: usize, align: usize) -> Result<u64, SpaceError> {
        assert!(size > 0 && align.is_power_of_two() && align <= 4096);
        if self.fail_alloc == Some(segment) {
            return Err(SpaceError::NoMemory);
        }
        let s = segment.index();
        let addr = self.next[s].next_multiple_of(align as u64);
        self.next[s] = addr + size as u64;
        self.live.insert((s, addr), size);
        Ok(addr)
    }

    fn fill(&mut self, segment: Segment, addr: u64, image: &[u8]) -> Result<(), SpaceError> {
        assert_eq!(self.live.get(&(segment.index(), addr)), Some(&image.len()));
        if self.fail_fill == Some(segment) {
            return Err(SpaceError::Failed("model"));
        }
        self.filled.insert((segment.index(), addr), image.to_vec());
        Ok(())
    }

    fn free(&mut self, segment: Segment, addr: u64, size: usize) {
        assert_eq!(
            self.live.remove(&(segment.index(), addr)),
            Some(size),
            "freed what was allocated"
        );
        self.filled.remove(&(segment.index(), addr));
    }

    unsafe fn call_init(&mut self, addr: u64) -> i32 {
        self.calls.push(("init", addr));
        self.init_result
    }

    unsafe fn call_exit(&mut self, addr: u64) {
        self.calls.push(("exit", addr));
    }
}

fn exports() -> Vec<Export> {
    [
        "kernel_log",
        "kernel_event",
        "kernel_add",
        "memcpy",
        "memmove",
        "memset",
        "memcmp",
    ]
    .iter()
    .enumerate()
    .map(|(i, &name)| Export {
        name,
        addr: KERNEL + 0x100 * i as u64,
    })
    .chain([Export {
        name: "kernel_small_value",
        addr: 0x1234,
    }])
    .collect()
}

fn registry() -> Modules<ModelSpace> {
    Modules::new(ModelSpace::new(), &exports())
}

#[test]
fn header_errors_are_typed() {
    let mut modules = registry();
    let mut header = [0u8; 64];
    header[..4].copy_from_slice(b"\x7fELF");
    header[4] = 2;
    header[5] = 1;
    header[6] = 1;
    // SAFETY: the model space runs no code.
    let load = |m: &mut Modules<ModelSpace>, bytes: &[u8]| unsafe { m.load("x", bytes) };
    assert_eq!(load(&mut modules, b""), Err(LoadError::NotElf));
    assert_eq!(load(&mut modules, b"hello, world"), Err(LoadError::NotElf));
    assert_eq!(load(&mut modules, &header[..40]), Err(LoadError::NotElf));
    let mut h = header;
    h[4] = 1;
    assert_eq!(
        load(&mut modules, &h),
        Err(LoadError::WrongClass { found: 1 })
    );
    let mut h = header;
    h[5] = 2;
    assert_eq!(
        load(&mut modules, &h),
        Err(LoadError::WrongByteOrder { found: 2 })
    );
    let mut h = header;
    h[16] = 2; // ET_EXEC
    assert_eq!(
        load(&mut modules, &h),
        Err(LoadError::NotRelocatable { found: 2 })
    );
    let mut h = header;
    h[16] = 1;
    h[18] = 62; // EM_X86_64
    assert_eq!(
        load(&mut modules, &h),
        Err(LoadError::WrongMachine { found: 62 })
    );
    assert!(modules.space().live.is_empty());
    assert_eq!(modules.iter().count(), 0);
}

#[cfg(execmem_modules)]
mod with_test_modules {
    use super::*;
    use proptest::prelude::*;

    const HELLO: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/modules/hello.o"));
    const USER: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/modules/user.o"));
    const RELOCS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/modules/relocs.o"));

    fn load(m: &mut Modules<ModelSpace>, name: &str, file: &[u8]) -> Result<ModuleId, LoadError> {
        // SAFETY: the model space runs no code.
        unsafe { m.load(name, file) }
    }

    fn unload(m: &mut Modules<ModelSpace>, id: ModuleId) -> Result<(), UnloadError> {
        // SAFETY: the model space runs no code.
        unsafe { m.unload(id) }
    }

    /// Loading `file` into a registry holding `relocs` fails with `expected`, and changes
    /// nothing.
    fn refused(file: &[u8], expected: impl Fn(&LoadError) -> bool) {
        let mut modules = registry();
        let relocs = load(&mut modules, "relocs", RELOCS).unwrap();
        let live = modules.space().live.clone();
        let calls = modules.space().calls.len();
        let error = load(&mut modules, "bad", file).unwrap_err();
        assert!(expected(&error), "unexpected {error:?}");
        assert_eq!(modules.space().live, live, "nothing left allocated");
        assert_eq!(modules.space().calls.len(), calls, "no code ran");
        assert_eq!(modules.iter().map(|m| m.id()).collect::<Vec<_>>(), [relocs]);
    }

    /// Byte offset of the first RELA entry of a section relocating an allocated section.
    fn first_rela(file: &[u8]) -> usize {
        use object::read::elf::{FileHeader, SectionHeader};
        let e = object::LittleEndian;
        let copy = super::super::aligned_copy(file);
        // SAFETY: `copy` holds the file's bytes.
        let data = unsafe { core::slice::from_raw_parts(copy.as_ptr().cast::<u8>(), file.len()) };
        let header = object::elf::FileHeader64::<object::LittleEndian>::parse(data).unwrap();
        let sections = header.sections(e, data).unwrap();
        sections
            .iter()
            .find(|s| {
                s.sh_type(e) == object::elf::SHT_RELA
                    && sections
                        .section(object::read::SectionIndex(s.sh_info(e) as usize))
                        .is_ok_and(|t| t.sh_flags(e).0 & object::elf::SHF_ALLOC.0 != 0)
            })
            .map(|s| s.sh_offset(e) as usize)
            .expect("the module has relocations")
    }

    #[test]
    fn modules_load_link_and_unload_in_order() {
        let mut modules = registry();
        let hello = load(&mut modules, "hello", HELLO).unwrap();
        let m = modules.get(hello).unwrap();
        assert!(m.segment(Segment::Text).1 > 0);
        assert!(m.symbol("hello_add").is_some() && m.symbol("module_init").is_none());
        assert!(m.uses().is_empty());
        let (text, _) = m.segment(Segment::Text);
        let init_at = modules.space().calls[0];
        assert_eq!(init_at.0, "init");
        assert!(init_at.1 >= text);

        let user = load(&mut modules, "user", USER).unwrap();
        assert_eq!(modules.get(user).unwrap().uses(), [hello]);
        assert_eq!(
            modules.symbol("user_calls_hello"),
            modules.get(user).unwrap().symbol("user_calls_hello")
        );
        assert_eq!(
            unload(&mut modules, hello),
            Err(UnloadError::InUse { by: user })
        );
        assert!(modules.get(hello).is_some());
        assert_eq!(
            load(&mut modules, "hello", HELLO),
            Err(LoadError::NameTaken)
        );
        unload(&mut modules, user).unwrap();
        unload(&mut modules, hello).unwrap();
        assert_eq!(
            unload(&mut modules, hello),
            Err(UnloadError::NotLoaded(hello))
        );
        let order: Vec<_> = modules.space().calls.iter().map(|c| c.0).collect();
        assert_eq!(order, ["init", "init", "exit", "exit"]);
        assert!(modules.space().live.is_empty(), "everything freed");
    }

    #[test]
    fn data_relocations_produce_their_addresses() {
        let mut modules = registry();
        let id = load(&mut modules, "relocs", RELOCS).unwrap();
        let target = modules.symbol("reloc_target_data").unwrap();
        let word = |name: &str, width: usize| {
            let at = modules.symbol(name).unwrap();
            let bytes = [Segment::Data, Segment::Rodata]
                .into_iter()
                .find_map(|s| modules.space().bytes_at(s, at, width))
                .unwrap_or_else(|| panic!("{name} is in a data segment"));
            let mut b = [0u8; 8];
            b[..width].copy_from_slice(bytes);
            (at, u64::from_le_bytes(b))
        };
        assert_eq!(word("reloc_data_abs64", 8).1, target);
        assert_eq!(word("reloc_data_abs32", 4).1, target);
        assert_eq!(word("reloc_data_abs16", 2).1, 0x1234);
        let (at, v) = word("reloc_data_prel64", 8);
        assert_eq!(at.wrapping_add(v), target);
        let (at, v) = word("reloc_data_prel32", 4);
        assert_eq!(at.wrapping_add(v as u32 as i32 as i64 as u64), target);
        let (at, v) = word("reloc_data_prel16", 2);
        let near = modules.symbol("reloc_prel16_target").unwrap();
        assert_eq!(at.wrapping_add(v as u16 as i16 as i64 as u64), near);
        assert!(modules.get(id).unwrap().relocations() >= 27);
    }

    #[test]
    fn an_unresolved_symbol_is_refused() {
        let mut modules = Modules::new(ModelSpace::new(), &[]);
        assert!(matches!(
            load(&mut modules, "hello", HELLO),
            Err(LoadError::Unresolved { .. })
        ));
        assert!(modules.space().live.is_empty());
        // user needs hello's exports.
        let mut modules = registry();
        assert!(matches!(
            load(&mut modules, "user", USER),
            Err(LoadError::Unresolved { symbol }) if symbol.starts_with("hello_")
        ));
        assert!(modules.space().live.is_empty());
    }

    #[test]
    fn a_duplicate_symbol_is_refused() {
        let mut modules = registry();
        load(&mut modules, "hello", HELLO).unwrap();
        let live = modules.space().live.clone();
        assert!(matches!(
            load(&mut modules, "hello again", HELLO),
            Err(LoadError::DuplicateSymbol { .. })
        ));
        assert_eq!(modules.space().live, live);
        let mut exports = exports();
        exports.push(Export {
            name: "hello_add",
            addr: KERNEL,
        });
        let mut modules = Modules::new(ModelSpace::new(), &exports);
        assert_eq!(
            load(&mut modules, "hello", HELLO),
            Err(LoadError::DuplicateSymbol {
                symbol: "hello_add".into()
            })
        );
        assert!(modules.space().live.is_empty());
    }

    #[test]
    fn a_branch_out_of_range_is_refused() {
        // kernel_add 4 GiB away from the module text: CALL26 cannot reach it.
        let far: Vec<Export> = exports()
            .into_iter()
            .map(|mut e| {
                if e.name == "kernel_add" {
                    e.addr += 1 << 32;
                }
                e
            })
            .collect();
        let mut modules = Modules::new(ModelSpace::new(), &far);
        let error = load(&mut modules, "hello", HELLO).unwrap_err();
        assert!(
            matches!(
                error,
                LoadError::BadRelocation {
                    error: RelocError::OutOfRange { .. },
                    ..
                }
            ),
            "{error:?}"
        );
        assert!(modules.space().live.is_empty());
    }

    #[test]
    fn corrupt_tables_are_refused() {
        let rela = first_rela(HELLO);
        // An unknown relocation type (r_info low 32 bits at +8).
        let mut bad = HELLO.to_vec();
        bad[rela + 8..rela + 12].copy_from_slice(&1000u32.to_le_bytes());
        refused(&bad, |e| {
            matches!(e, LoadError::UnknownRelocation { r_type: 1000, .. })
        });
        // A symbol index past the table (r_info high 32 bits at +12).
        let mut bad = HELLO.to_vec();
        bad[rela + 12..rela + 16].copy_from_slice(&0x00ff_ffffu32.to_le_bytes());
        refused(&bad, |e| matches!(e, LoadError::SymbolOutsideFile { .. }));
        // A place past the end of its section (r_offset at +0).
        let mut bad = HELLO.to_vec();
        bad[rela..rela + 8].copy_from_slice(&0x7fff_fff0u64.to_le_bytes());
        refused(&bad, |e| {
            matches!(e, LoadError::RelocationOutsideSection { .. })
        });
        // Section headers past the end of the file (e_shoff at 0x28).
        let mut bad = HELLO.to_vec();
        bad[0x28..0x30].copy_from_slice(&(1u64 << 40).to_le_bytes());
        refused(&bad, |e| *e == LoadError::SectionTableOutsideFile);
    }

    #[test]
    fn limits_init_failure_and_space_failures_leave_nothing() {
        let mut modules = Modules::with_limits(
            ModelSpace::new(),
            &exports(),
            Limits {
                file: HELLO.len() - 1,
                segment: 1 << 20,
            },
        );
        assert!(matches!(
            load(&mut modules, "hello", HELLO),
            Err(LoadError::TooLarge { segment: None, .. })
        ));
        let mut modules = Modules::with_limits(
            ModelSpace::new(),
            &exports(),
            Limits {
                file: 1 << 20,
                segment: 8,
            },
        );
        assert!(matches!(
            load(&mut modules, "hello", HELLO),
            Err(LoadError::TooLarge {
                segment: Some(_),
                ..
            })
        ));
        for segment in Segment::ALL {
            let mut modules = registry();
            modules.space.fail_alloc = Some(segment);
            assert_eq!(
                load(&mut modules, "hello", HELLO),
                Err(LoadError::NoMemory(segment))
            );
            assert!(modules.space().live.is_empty());
            let mut modules = registry();
            modules.space.fail_fill = Some(segment);
            assert!(matches!(
                load(&mut modules, "hello", HELLO),
                Err(LoadError::FillFailed(s, _)) if s == segment
            ));
            assert!(modules.space().live.is_empty());
        }
        let mut modules = registry();
        modules.space.init_result = -22;
        assert_eq!(
            load(&mut modules, "hello", HELLO),
            Err(LoadError::InitFailed { code: -22 })
        );
        assert!(modules.space().live.is_empty() && modules.iter().count() == 0);
        // Unaligned input is copied, not refused.
        let mut shifted = alloc::vec![0u8; HELLO.len() + 1];
        shifted[1..].copy_from_slice(HELLO);
        let mut modules = registry();
        load(&mut modules, "hello", &shifted[1..]).unwrap();
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(5000))]

        /// Random corruption of a valid module: loading never panics, and a refusal leaves
        /// nothing allocated, registered or run; a load that succeeds unloads cleanly.
        #[test]
        fn corrupted_modules_never_panic(
            which in 0usize..3,
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..12),
        ) {
            let file = [HELLO, USER, RELOCS][which];
            let mut bad = file.to_vec();
            for (at, byte) in &edits {
                let i = at.index(bad.len());
                bad[i] = *byte;
            }
            let mut modules = registry();
            let hello = if which == 1 { Some(load(&mut modules, "hello", HELLO).unwrap()) } else { None };
            let live = modules.space().live.clone();
            let calls = modules.space().calls.len();
            match load(&mut modules, "module", &bad) {
                Ok(id) => {
                    unload(&mut modules, id).unwrap();
                    prop_assert_eq!(&modules.space().live, &live);
                }
                Err(_) => {
                    prop_assert_eq!(&modules.space().live, &live);
                    prop_assert_eq!(modules.space().calls.len(), calls);
                    prop_assert_eq!(modules.iter().count(), usize::from(hello.is_some()));
                }
            }
        }
    }
}
