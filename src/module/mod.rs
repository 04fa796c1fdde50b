//! The module loader: AArch64 ELF relocatable objects (ET_REL) loaded into a running kernel, as
//! Linux's `load_module` does for `.ko` files and pKVM for its EL2 modules.
//!
//! A module's code goes into one exec slot (so it shares a pack with every other user of exec
//! memory, and reaches kernel text with one `BL`), its read-only data into memory that is made
//! read-only once relocated, its data and bss into read-write, execute-never memory: nothing is
//! ever writable and executable. The relocated code is written through the text poke and
//! published to every CPU before anything runs it.
//!
//! Undefined symbols are found in the kernel's export table and then in the modules loaded
//! before; a module's `module_init` runs after it is loaded and its `module_exit` before it is
//! unloaded, and a module whose symbols a later module uses cannot be unloaded first.
//!
//! Layers: [`elf`] reads and links one object and [`reloc`] applies one relocation, both
//! portable and tested on the host; [`Modules`] is the registry, generic over a
//! [`ModuleSpace`] (where segments live and how code gets in); `ExecModules` (on AArch64) is the
//! space over an [`crate::manager::ExecManager`] and the kernel's [`ModuleMemory`].
//!
//! The module ABI: `extern "C" fn module_init() -> i32` (0 is success; anything else unloads the
//! module and is returned as [`LoadError::InitFailed`]) and `extern "C" fn module_exit()`, both
//! optional and never exported; every other global, defined, default-visibility symbol is the
//! module's export.

pub mod elf;
pub mod reloc;
#[cfg(test)]
mod tests;

#[cfg(target_arch = "aarch64")]
mod exec;
#[cfg(target_arch = "aarch64")]
pub use exec::{ExecModules, ModuleMemory};

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use elf::{EXIT_SYMBOL, INIT_SYMBOL, Object};
use reloc::RelocError;

/// The three kinds of memory a module is loaded into.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Segment {
    /// Code: one exec slot (read-only + executable, written through the text poke).
    Text,
    /// Read-only data, and data that is read-only once relocated (`.data.rel.ro`): read-write
    /// while the loader fills it, then read-only + execute-never.
    Rodata,
    /// Data and bss: read-write + execute-never.
    Data,
}

impl Segment {
    /// Every segment, in [`Segment::index`] order.
    pub const ALL: [Segment; 3] = [Segment::Text, Segment::Rodata, Segment::Data];

    /// Its place in per-segment arrays.
    pub const fn index(self) -> usize {
        match self {
            Self::Text => 0,
            Self::Rodata => 1,
            Self::Data => 2,
        }
    }

    /// Its name in reports.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Rodata => "rodata",
            Self::Data => "data",
        }
    }
}

/// A symbol the kernel exports to modules (Linux `EXPORT_SYMBOL`): a function, an object, or an
/// absolute value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Export {
    /// The name modules refer to it by.
    pub name: &'static str,
    /// Its address (or value).
    pub addr: u64,
}

/// Why a [`ModuleSpace`] could not give or fill memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpaceError {
    /// No memory left for it.
    NoMemory,
    /// Larger than this kind of memory can be.
    TooLarge,
    /// Writing or sealing it failed (the text poke, a page-table change).
    Failed(&'static str),
}

impl fmt::Display for SpaceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoMemory => f.write_str("no memory left"),
            Self::TooLarge => f.write_str("too large"),
            Self::Failed(why) => f.write_str(why),
        }
    }
}

/// Where a module's segments live, and how they are filled: the loader's view of the kernel.
pub trait ModuleSpace {
    /// `size` bytes (not 0) aligned to `align` (a power of two up to 4096) for `segment`: exec
    /// memory for text, zeroed read-write + execute-never memory for rodata and data. Returns
    /// its address.
    fn alloc(&mut self, segment: Segment, size: usize, align: usize) -> Result<u64, SpaceError>;

    /// Puts the linked `image` (exactly the size asked for) into the memory at `addr`: text
    /// through the text poke, published to every CPU (any CPU may run it once this returns);
    /// data copied; rodata copied, then made read-only everywhere.
    fn fill(&mut self, segment: Segment, addr: u64, image: &[u8]) -> Result<(), SpaceError>;

    /// Gives back memory from [`ModuleSpace::alloc`], filled or not.
    fn free(&mut self, segment: Segment, addr: u64, size: usize);

    /// Runs the module's `module_init` at `addr`.
    ///
    /// # Safety
    /// `addr` is the entry of a published, linked `extern "C" fn() -> i32`.
    unsafe fn call_init(&mut self, addr: u64) -> i32;

    /// Runs the module's `module_exit` at `addr`.
    ///
    /// # Safety
    /// `addr` is the entry of a published, linked `extern "C" fn()`.
    unsafe fn call_exit(&mut self, addr: u64);
}

/// Why a module was not loaded. Nothing of it is left allocated or registered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoadError {
    /// Not an ELF file (magic, version, or shorter than its header).
    NotElf,
    /// Not ELFCLASS64 (the class byte found).
    WrongClass {
        /// EI_CLASS.
        found: u8,
    },
    /// Not little-endian (the byte-order byte found).
    WrongByteOrder {
        /// EI_DATA.
        found: u8,
    },
    /// Not for AArch64 (EM_AARCH64, 183).
    WrongMachine {
        /// e_machine.
        found: u16,
    },
    /// Not a relocatable object (ET_REL): an executable or shared object is not a module.
    NotRelocatable {
        /// e_type.
        found: u16,
    },
    /// The section header table does not lie inside the file.
    SectionTableOutsideFile,
    /// A section's contents or name do not lie inside the file.
    SectionOutsideFile {
        /// Its index.
        section: usize,
    },
    /// A relocation names a symbol the table does not have, or a symbol's name is outside the
    /// string table.
    SymbolOutsideFile {
        /// The symbol index.
        symbol: usize,
    },
    /// A symbol's section does not exist or its value is past the section's end.
    SymbolOutsideSection {
        /// The symbol index.
        symbol: usize,
    },
    /// A relocation's place is not inside its section.
    RelocationOutsideSection {
        /// The section relocated.
        section: usize,
        /// r_offset.
        offset: u64,
    },
    /// A relocation type the loader does not apply.
    UnknownRelocation {
        /// r_type.
        r_type: u32,
        /// The section relocated.
        section: usize,
        /// r_offset.
        offset: u64,
    },
    /// A relocation's value does not fit its field, or is misaligned for it.
    BadRelocation {
        /// The section relocated.
        section: usize,
        /// r_offset.
        offset: u64,
        /// What [`reloc::apply`] said.
        error: RelocError,
    },
    /// Neither the kernel nor a loaded module defines this symbol.
    Unresolved {
        /// The name.
        symbol: String,
    },
    /// The module defines a symbol the kernel or a loaded module (or the module itself,
    /// twice) already defines.
    DuplicateSymbol {
        /// The name.
        symbol: String,
    },
    /// A module of this name is loaded.
    NameTaken,
    /// The file or a segment is larger than the loader or the memory takes.
    TooLarge {
        /// The segment (`None`: the file).
        segment: Option<Segment>,
        /// Its size in bytes.
        size: usize,
    },
    /// No memory for a segment.
    NoMemory(Segment),
    /// Filling a segment failed (the text poke, sealing rodata).
    FillFailed(Segment, SpaceError),
    /// Something ELF allows that this loader does not do (the index of the section or symbol).
    Unsupported {
        /// What.
        what: &'static str,
        /// The section or symbol index.
        index: usize,
    },
    /// The file is inconsistent in another way (the index of the section or symbol).
    Malformed {
        /// What.
        what: &'static str,
        /// The section or symbol index.
        index: usize,
    },
    /// `module_init` returned this non-zero code; the module was unloaded again.
    InitFailed {
        /// The code.
        code: i32,
    },
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotElf => f.write_str("not an ELF file"),
            Self::WrongClass { found } => write!(f, "ELF class {found}, not 64-bit"),
            Self::WrongByteOrder { found } => write!(f, "ELF data {found}, not little-endian"),
            Self::WrongMachine { found } => write!(f, "ELF machine {found}, not AArch64 (183)"),
            Self::NotRelocatable { found } => {
                write!(f, "ELF type {found}, not a relocatable object (1)")
            }
            Self::SectionTableOutsideFile => f.write_str("section headers outside the file"),
            Self::SectionOutsideFile { section } => {
                write!(f, "section {section} lies outside the file")
            }
            Self::SymbolOutsideFile { symbol } => {
                write!(f, "symbol {symbol} or its name lies outside the file")
            }
            Self::SymbolOutsideSection { symbol } => {
                write!(f, "symbol {symbol} lies outside its section")
            }
            Self::RelocationOutsideSection { section, offset } => {
                write!(
                    f,
                    "relocation at {offset:#x} lies outside section {section}"
                )
            }
            Self::UnknownRelocation {
                r_type,
                section,
                offset,
            } => write!(
                f,
                "unknown relocation type {r_type} at {offset:#x} in section {section}"
            ),
            Self::BadRelocation {
                section,
                offset,
                error,
            } => write!(f, "relocation at {offset:#x} in section {section}: {error}"),
            Self::Unresolved { symbol } => write!(f, "unresolved symbol {symbol}"),
            Self::DuplicateSymbol { symbol } => write!(f, "symbol {symbol} is defined already"),
            Self::NameTaken => f.write_str("a module of that name is loaded"),
            Self::TooLarge { segment, size } => match segment {
                Some(s) => write!(f, "{} segment of {size} bytes is too large", s.name()),
                None => write!(f, "file of {size} bytes is too large"),
            },
            Self::NoMemory(s) => write!(f, "no memory for the {} segment", s.name()),
            Self::FillFailed(s, e) => write!(f, "cannot fill the {} segment: {e}", s.name()),
            Self::Unsupported { what, index } => write!(f, "unsupported: {what} ({index})"),
            Self::Malformed { what, index } => write!(f, "malformed: {what} ({index})"),
            Self::InitFailed { code } => write!(f, "module_init returned {code}"),
        }
    }
}

impl core::error::Error for LoadError {}

/// Why a module was not unloaded. It stays loaded, untouched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UnloadError {
    /// No module has this id.
    NotLoaded(ModuleId),
    /// A module loaded later uses its symbols: unload that one first.
    InUse {
        /// The module that uses it.
        by: ModuleId,
    },
}

impl fmt::Display for UnloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotLoaded(id) => write!(f, "no module {}", id.0),
            Self::InUse { by } => write!(f, "module {} uses its symbols", by.0),
        }
    }
}

impl core::error::Error for UnloadError {}

/// A loaded module's handle: unique for the registry's life (never reused).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModuleId(pub u32);

/// The loader's limits on input, checked before any memory is taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest ELF file.
    pub file: usize,
    /// Largest segment (text, rodata or data with bss).
    pub segment: usize,
}

impl Limits {
    /// 16 MiB files, 8 MiB segments (the text of one module must also fit one 2 MiB pack).
    pub const DEFAULT: Limits = Limits {
        file: 16 << 20,
        segment: 8 << 20,
    };
}

/// A loaded module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Module {
    id: ModuleId,
    name: String,
    /// Address and size of each segment ([`Segment::index`]; size 0: none).
    segments: [(u64, usize); 3],
    exports: Vec<(String, u64)>,
    uses: Vec<ModuleId>,
    exit: Option<u64>,
    relocations: usize,
}

impl Module {
    /// Its handle.
    pub fn id(&self) -> ModuleId {
        self.id
    }

    /// The name it was loaded under.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Address and size of a segment (size 0 if the module has none of it).
    pub fn segment(&self, segment: Segment) -> (u64, usize) {
        self.segments[segment.index()]
    }

    /// What it exports, name and address.
    pub fn exports(&self) -> &[(String, u64)] {
        &self.exports
    }

    /// The address of one of its exports.
    pub fn symbol(&self, name: &str) -> Option<u64> {
        self.exports
            .iter()
            .find(|(n, _)| n == name)
            .map(|&(_, addr)| addr)
    }

    /// The modules whose symbols it uses.
    pub fn uses(&self) -> &[ModuleId] {
        &self.uses
    }

    /// Relocations applied when it was loaded.
    pub fn relocations(&self) -> usize {
        self.relocations
    }
}

/// The registry of loaded modules over a [`ModuleSpace`]. Not locked: a kernel keeps it behind
/// its own lock (loading runs module code, so not with interrupts masked).
pub struct Modules<S: ModuleSpace> {
    space: S,
    kernel: Vec<Export>,
    loaded: Vec<Module>,
    next_id: u32,
    limits: Limits,
}

impl<S: ModuleSpace> Modules<S> {
    /// A registry with no module loaded, resolving against the kernel's `exports`.
    pub fn new(space: S, exports: &[Export]) -> Self {
        Self::with_limits(space, exports, Limits::DEFAULT)
    }

    /// [`Modules::new`] with other limits.
    pub fn with_limits(space: S, exports: &[Export], limits: Limits) -> Self {
        Self {
            space,
            kernel: exports.to_vec(),
            loaded: Vec::new(),
            next_id: 1,
            limits,
        }
    }

    /// The memory the modules live in.
    pub fn space(&self) -> &S {
        &self.space
    }

    /// The loaded modules, in load order.
    pub fn iter(&self) -> impl Iterator<Item = &Module> {
        self.loaded.iter()
    }

    /// A loaded module.
    pub fn get(&self, id: ModuleId) -> Option<&Module> {
        self.loaded.iter().find(|m| m.id == id)
    }

    /// A loaded module by name.
    pub fn find(&self, name: &str) -> Option<&Module> {
        self.loaded.iter().find(|m| m.name == name)
    }

    /// The address of a kernel export or of a loaded module's export.
    pub fn symbol(&self, name: &str) -> Option<u64> {
        self.provider(name).map(|(addr, _)| addr)
    }

    /// Who defines `name`: its address, and the module (`None`: the kernel).
    fn provider(&self, name: &str) -> Option<(u64, Option<ModuleId>)> {
        if let Some(export) = self.kernel.iter().find(|e| e.name == name) {
            return Some((export.addr, None));
        }
        self.loaded
            .iter()
            .find_map(|m| m.symbol(name).map(|addr| (addr, Some(m.id))))
    }

    /// Loads the module in `file` under `name`: checks, places, links, fills and publishes it,
    /// then runs its `module_init`. On any error nothing of it is left allocated or registered.
    ///
    /// # Safety
    /// The module is trusted kernel code: its init runs here, at the kernel's privilege, and it
    /// may call anything it links against.
    pub unsafe fn load(&mut self, name: &str, file: &[u8]) -> Result<ModuleId, LoadError> {
        if file.len() > self.limits.file {
            return Err(LoadError::TooLarge {
                segment: None,
                size: file.len(),
            });
        }
        if self.find(name).is_some() {
            return Err(LoadError::NameTaken);
        }
        // The ELF reader reads headers in place: it needs the file 8-byte aligned.
        let copy;
        let data = if file.as_ptr().align_offset(8) == 0 {
            file
        } else {
            copy = aligned_copy(file);
            // SAFETY: `copy` holds `file.len()` initialised bytes (u64 words, copied from
            // `file`), lives to the end of this function, and is not written while borrowed.
            unsafe { core::slice::from_raw_parts(copy.as_ptr().cast::<u8>(), file.len()) }
        };
        let object = Object::parse(data)?;
        let layout = object.layout();
        for segment in Segment::ALL {
            let size = layout.size[segment.index()];
            if size > self.limits.segment {
                return Err(LoadError::TooLarge {
                    segment: Some(segment),
                    size,
                });
            }
        }
        let definitions = object.definitions(&layout)?;
        self.check_duplicates(&definitions)?;
        let init = object.entry(INIT_SYMBOL, &layout)?;
        let exit = object.entry(EXIT_SYMBOL, &layout)?;
        let mut uses = Vec::new();
        for (symbol, weak) in object.undefined()? {
            match self.provider(symbol) {
                Some((_, Some(module))) if !uses.contains(&module) => uses.push(module),
                Some(_) => {}
                None if weak => {}
                None => {
                    return Err(LoadError::Unresolved {
                        symbol: String::from(symbol),
                    });
                }
            }
        }

        let mut base = [0u64; 3];
        let mut taken: Vec<Segment> = Vec::new();
        let result = self.place_and_fill(&object, &layout, &mut base, &mut taken);
        if let Err(error) = result {
            for segment in taken {
                self.space
                    .free(segment, base[segment.index()], layout.size[segment.index()]);
            }
            return Err(error);
        }

        let id = ModuleId(self.next_id);
        self.next_id = self.next_id.wrapping_add(1);
        let address = |segment: Option<Segment>, offset: u64| match segment {
            Some(s) => base[s.index()] + offset,
            None => offset,
        };
        self.loaded.push(Module {
            id,
            name: String::from(name),
            segments: [0, 1, 2].map(|s| (base[s], layout.size[s])),
            exports: definitions
                .into_iter()
                .map(|d| (d.name, address(d.segment, d.offset)))
                .collect(),
            uses,
            exit: exit.map(|offset| base[Segment::Text.index()] + offset),
            relocations: object.relocation_count(),
        });
        if let Some(offset) = init {
            // SAFETY: the text is linked and published (`place_and_fill`), and the entry is a
            // defined function in it; the caller vouches for the module's code.
            let code = unsafe { self.space.call_init(base[Segment::Text.index()] + offset) };
            if code != 0 {
                if let Some(module) = self.loaded.pop() {
                    self.release(&module);
                }
                return Err(LoadError::InitFailed { code });
            }
        }
        Ok(id)
    }

    fn check_duplicates(&self, definitions: &[elf::Definition]) -> Result<(), LoadError> {
        for (i, d) in definitions.iter().enumerate() {
            if self.provider(&d.name).is_some()
                || definitions[..i].iter().any(|other| other.name == d.name)
            {
                return Err(LoadError::DuplicateSymbol {
                    symbol: d.name.clone(),
                });
            }
        }
        Ok(())
    }

    /// Allocates each segment (recording it in `taken`), links, fills.
    fn place_and_fill(
        &mut self,
        object: &Object<'_>,
        layout: &elf::Layout,
        base: &mut [u64; 3],
        taken: &mut Vec<Segment>,
    ) -> Result<(), LoadError> {
        for segment in Segment::ALL {
            let (size, align) = (layout.size[segment.index()], layout.align[segment.index()]);
            if size == 0 {
                continue;
            }
            base[segment.index()] =
                self.space
                    .alloc(segment, size, align)
                    .map_err(|error| match error {
                        SpaceError::TooLarge => LoadError::TooLarge {
                            segment: Some(segment),
                            size,
                        },
                        _ => LoadError::NoMemory(segment),
                    })?;
            taken.push(segment);
        }
        let images = object.link(layout, *base, |name| self.symbol(name))?;
        // Data first, rodata (sealed) next, code last: nothing can run the code before the
        // memory it refers to holds what it should.
        for segment in [Segment::Data, Segment::Rodata, Segment::Text] {
            if layout.size[segment.index()] == 0 {
                continue;
            }
            self.space
                .fill(segment, base[segment.index()], &images[segment.index()])
                .map_err(|e| LoadError::FillFailed(segment, e))?;
        }
        Ok(())
    }

    fn release(&mut self, module: &Module) {
        for segment in Segment::ALL {
            let (addr, size) = module.segments[segment.index()];
            if size != 0 {
                self.space.free(segment, addr, size);
            }
        }
    }

    /// Runs the module's `module_exit` and frees everything it had. Refused, with nothing done,
    /// while a module loaded later uses its symbols.
    ///
    /// # Safety
    /// No CPU runs the module's code or will again, and nothing holds a pointer into its
    /// memory once its exit has run (the kernel's own reference counting, as Linux's
    /// `try_module_get`).
    pub unsafe fn unload(&mut self, id: ModuleId) -> Result<(), UnloadError> {
        let at = self
            .loaded
            .iter()
            .position(|m| m.id == id)
            .ok_or(UnloadError::NotLoaded(id))?;
        if let Some(user) = self.loaded.iter().find(|m| m.uses.contains(&id)) {
            return Err(UnloadError::InUse { by: user.id });
        }
        let module = self.loaded.remove(at);
        if let Some(exit) = module.exit {
            // SAFETY: the module's text is still mapped and published; `exit` is its
            // `module_exit`, and the caller vouches for its code.
            unsafe { self.space.call_exit(exit) };
        }
        self.release(&module);
        Ok(())
    }
}

fn aligned_copy(file: &[u8]) -> Vec<u64> {
    let mut words = alloc::vec![0u64; file.len().div_ceil(8)];
    // SAFETY: `words` has room for `file.len()` bytes (rounded up to whole words), any byte
    // pattern is a valid u64, and the two do not overlap (`words` is new).
    unsafe {
        core::ptr::copy_nonoverlapping(file.as_ptr(), words.as_mut_ptr().cast::<u8>(), file.len())
    };
    words
}
