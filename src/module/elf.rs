//! Reading and linking one AArch64 ELF relocatable object (ET_REL), with the `object` crate's
//! ELF reader: check the header, place every allocated section in its segment (text, rodata,
//! data), find every symbol a relocation names, and apply the relocations to the segments'
//! images at the addresses the module will run at.
//!
//! Nothing here allocates exec or data memory or runs code: [`Object::parse`] and
//! [`Object::layout`] read the file, [`Object::link`] fills buffers. The loader
//! ([`super::Modules`]) does the rest, so every check here is made before any memory is taken
//! or after it with everything given back.

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use object::LittleEndian as LE;
use object::elf::{self, FileHeader64, SectionHeader64, Sym64};
use object::read::elf::{FileHeader, Rela, SectionHeader, SectionTable, Sym, SymbolTable};
use object::read::{SectionIndex, SymbolIndex};

use super::reloc::{self, RelocKind};
use super::{LoadError, Segment};

type Sections<'d> = SectionTable<'d, FileHeader64<LE>, &'d [u8]>;
type Symbols<'d> = SymbolTable<'d, FileHeader64<LE>, &'d [u8]>;

/// Largest alignment a section may ask for: a page, the alignment of every segment's memory.
pub const MAX_SECTION_ALIGN: u64 = 4096;

/// The names of a module's entry points: not exported, called by the loader.
pub const INIT_SYMBOL: &str = "module_init";
/// See [`INIT_SYMBOL`].
pub const EXIT_SYMBOL: &str = "module_exit";

/// A checked ELF relocatable object for AArch64, little-endian, 64-bit.
pub struct Object<'d> {
    data: &'d [u8],
    sections: Sections<'d>,
    symbols: Symbols<'d>,
}

/// Where each allocated section goes: its segment and offset in it, and each segment's size and
/// alignment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Layout {
    /// Per section index: the segment and the offset of the section in it.
    pub placed: Vec<Option<(Segment, usize)>>,
    /// Bytes of each segment ([`Segment::index`]).
    pub size: [usize; 3],
    /// Alignment each segment needs.
    pub align: [usize; 3],
}

/// A symbol a module defines for others.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Definition {
    /// Its name.
    pub name: String,
    /// Its segment and offset in it (`None`: an absolute value, in `offset`).
    pub segment: Option<Segment>,
    /// Offset in the segment, or the absolute value.
    pub offset: u64,
}

impl<'d> Object<'d> {
    /// Checks the header (identification, class, byte order, version, type, machine) and reads
    /// the section and symbol tables. `data` must be 8-byte aligned (the loader copies it if it
    /// is not).
    pub fn parse(data: &'d [u8]) -> Result<Self, LoadError> {
        check_ident(data)?;
        let header = FileHeader64::<LE>::parse(data).map_err(|_| LoadError::NotElf)?;
        let e = LE;
        if header.e_type(e) != elf::ET_REL {
            return Err(LoadError::NotRelocatable {
                found: header.e_type(e).0,
            });
        }
        if header.e_machine(e) != elf::EM_AARCH64 {
            return Err(LoadError::WrongMachine {
                found: header.e_machine(e).0,
            });
        }
        let sections = header
            .sections(e, data)
            .map_err(|_| LoadError::SectionTableOutsideFile)?;
        let mut tables = sections
            .enumerate()
            .filter(|(_, s)| s.sh_type(e) == elf::SHT_SYMTAB);
        let symbols = match (tables.next(), tables.next()) {
            (Some((index, section)), None) => {
                SymbolTable::parse(e, data, &sections, index, section)
                    .map_err(|_| LoadError::SectionOutsideFile { section: index.0 })?
            }
            (None, _) => Symbols::default(),
            (Some(_), Some((index, _))) => {
                return Err(LoadError::Malformed {
                    what: "a second symbol table",
                    index: index.0,
                });
            }
        };
        let object = Self {
            data,
            sections,
            symbols,
        };
        object.check_sections()?;
        Ok(object)
    }

    /// Every section's contents and name are inside the file; no section is of a kind the
    /// loader cannot honour.
    fn check_sections(&self) -> Result<(), LoadError> {
        let e = LE;
        for (index, section) in self.sections.enumerate() {
            let outside = LoadError::SectionOutsideFile { section: index.0 };
            if index.0 != 0 {
                self.sections
                    .section_name(e, section)
                    .map_err(|_| outside.clone())?;
            }
            if section.sh_type(e) != elf::SHT_NOBITS {
                section.data(e, self.data).map_err(|_| outside.clone())?;
            }
            let flags = section.sh_flags(e).0;
            let alloc = flags & elf::SHF_ALLOC.0 != 0;
            if section.sh_type(e) == elf::SHT_REL {
                return Err(LoadError::Unsupported {
                    what: "SHT_REL relocations (AArch64 objects use SHT_RELA)",
                    index: index.0,
                });
            }
            if !alloc {
                continue;
            }
            if flags & elf::SHF_TLS.0 != 0 {
                return Err(LoadError::Unsupported {
                    what: "a thread-local section",
                    index: index.0,
                });
            }
            if flags & elf::SHF_WRITE.0 != 0 && flags & elf::SHF_EXECINSTR.0 != 0 {
                return Err(LoadError::Unsupported {
                    what: "a writable and executable section",
                    index: index.0,
                });
            }
            let align = section.sh_addralign(e);
            if align > 1 && !align.is_power_of_two() {
                return Err(LoadError::Malformed {
                    what: "a section alignment that is not a power of two",
                    index: index.0,
                });
            }
            if align > MAX_SECTION_ALIGN {
                return Err(LoadError::Unsupported {
                    what: "a section aligned to more than a page",
                    index: index.0,
                });
            }
        }
        Ok(())
    }

    /// Places every allocated section: code in the text segment, read-only data (and
    /// `.data.rel.ro`, read-only once relocated) in rodata, the rest of the data and bss in data,
    /// each at its alignment, in section order.
    pub fn layout(&self) -> Layout {
        let e = LE;
        let mut layout = Layout {
            placed: vec![None; self.sections.len()],
            size: [0; 3],
            align: [1; 3],
        };
        for (index, section) in self.sections.enumerate() {
            let flags = section.sh_flags(e).0;
            if flags & elf::SHF_ALLOC.0 == 0 {
                continue;
            }
            let name = self.sections.section_name(e, section).unwrap_or_default();
            let segment = if flags & elf::SHF_EXECINSTR.0 != 0 {
                Segment::Text
            } else if flags & elf::SHF_WRITE.0 == 0 || name.starts_with(b".data.rel.ro") {
                Segment::Rodata
            } else {
                Segment::Data
            };
            let s = segment.index();
            // Checked against MAX_SECTION_ALIGN by parse; 0 and 1 both mean unaligned.
            let align = section.sh_addralign(e).max(1) as usize;
            // Saturating: a size past any memory is refused as too large before anything is
            // allocated for it.
            let offset = layout.size[s]
                .checked_next_multiple_of(align)
                .unwrap_or(usize::MAX);
            layout.size[s] = offset.saturating_add(section.sh_size(e) as usize);
            layout.align[s] = layout.align[s].max(align);
            layout.placed[index.0] = Some((segment, offset));
        }
        layout
    }

    /// The symbol names this object leaves undefined (global or weak), each with whether it is
    /// weak, in symbol-table order.
    pub fn undefined(&self) -> Result<Vec<(&'d str, bool)>, LoadError> {
        let e = LE;
        let mut names = Vec::new();
        for (index, symbol) in self.symbols.enumerate() {
            if index.0 == 0 || !symbol.is_undefined(e) || symbol.is_local() {
                continue;
            }
            names.push((self.name(index, symbol)?, symbol.is_weak()));
        }
        Ok(names)
    }

    /// The symbols this object defines for others: global or weak, defined, default or
    /// protected visibility, not a section or file symbol, and not the entry points.
    pub fn definitions(&self, layout: &Layout) -> Result<Vec<Definition>, LoadError> {
        let e = LE;
        let mut out = Vec::new();
        for (index, symbol) in self.symbols.enumerate() {
            let visible = matches!(
                symbol.st_visibility(),
                elf::STV_DEFAULT | elf::STV_PROTECTED
            );
            if index.0 == 0
                || symbol.is_local()
                || symbol.is_undefined(e)
                || !visible
                || matches!(symbol.st_type(), elf::STT_SECTION | elf::STT_FILE)
            {
                continue;
            }
            let name = self.name(index, symbol)?;
            if name.is_empty() || name == INIT_SYMBOL || name == EXIT_SYMBOL {
                continue;
            }
            let (segment, offset) = self.place_of(index, symbol, layout)?;
            out.push(Definition {
                name: String::from(name),
                segment,
                offset,
            });
        }
        Ok(out)
    }

    /// The offset in the text segment of a defined function named `name` (the entry points).
    pub fn entry(&self, name: &str, layout: &Layout) -> Result<Option<u64>, LoadError> {
        let e = LE;
        for (index, symbol) in self.symbols.enumerate() {
            if index.0 == 0 || symbol.is_local() || symbol.is_undefined(e) {
                continue;
            }
            if self.name(index, symbol)? != name {
                continue;
            }
            return match self.place_of(index, symbol, layout)? {
                (Some(Segment::Text), offset) => Ok(Some(offset)),
                _ => Err(LoadError::Malformed {
                    what: "an entry point that is not code",
                    index: index.0,
                }),
            };
        }
        Ok(None)
    }

    /// The relocations to apply: those of RELA sections whose target is allocated.
    pub fn relocation_count(&self) -> usize {
        let e = LE;
        self.sections
            .iter()
            .filter(|s| s.sh_type(e) == elf::SHT_RELA)
            .filter(|s| {
                self.sections
                    .section(SectionIndex(s.sh_info(e) as usize))
                    .is_ok_and(|t| t.sh_flags(e).0 & elf::SHF_ALLOC.0 != 0)
            })
            .map(|s| s.sh_size(e) as usize / core::mem::size_of::<elf::Rela64<LE>>())
            .sum()
    }

    /// Fills one image per segment: the sections' bytes at their offsets (bss and padding zero),
    /// every relocation applied for the segments at `base` ([`Segment::index`]). `resolve` gives
    /// the value of an undefined symbol by name, or `None` if nothing defines it (a weak one is
    /// then 0). Checks each relocation: known type, place inside its section, symbol inside the
    /// file and its section, value in range.
    pub fn link(
        &self,
        layout: &Layout,
        base: [u64; 3],
        mut resolve: impl FnMut(&str) -> Option<u64>,
    ) -> Result<[Vec<u8>; 3], LoadError> {
        let e = LE;
        let mut images = [
            vec![0u8; layout.size[0]],
            vec![0u8; layout.size[1]],
            vec![0u8; layout.size[2]],
        ];
        for (index, section) in self.sections.enumerate() {
            let Some((segment, offset)) = layout.placed[index.0] else {
                continue;
            };
            if section.sh_type(e) == elf::SHT_NOBITS {
                continue;
            }
            let bytes = section
                .data(e, self.data)
                .map_err(|_| LoadError::SectionOutsideFile { section: index.0 })?;
            images[segment.index()][offset..offset + bytes.len()].copy_from_slice(bytes);
        }
        for (rela_index, rela_section) in self.sections.enumerate() {
            if rela_section.sh_type(e) != elf::SHT_RELA {
                continue;
            }
            let target = SectionIndex(rela_section.sh_info(e) as usize);
            let target_header =
                self.sections
                    .section(target)
                    .map_err(|_| LoadError::Malformed {
                        what: "relocations for a section the file does not have",
                        index: rela_index.0,
                    })?;
            let Some((segment, section_offset)) = layout.placed.get(target.0).copied().flatten()
            else {
                // Relocations of a section that is not loaded (debug information).
                continue;
            };
            if rela_section.sh_link(e) as usize != self.symbols.section().0 {
                return Err(LoadError::Malformed {
                    what: "relocations against another symbol table",
                    index: rela_index.0,
                });
            }
            if target_header.sh_type(e) == elf::SHT_NOBITS {
                return Err(LoadError::Malformed {
                    what: "relocations in a section without contents",
                    index: rela_index.0,
                });
            }
            let relas = rela_section
                .data_as_array::<elf::Rela64<LE>, _>(e, self.data)
                .map_err(|_| LoadError::SectionOutsideFile {
                    section: rela_index.0,
                })?;
            let section_size = target_header.sh_size(e);
            for rela in relas {
                let r_offset = rela.r_offset(e);
                let r_type = rela.r_type(e, false).0;
                let Some(kind) = RelocKind::from_elf(r_type) else {
                    return Err(LoadError::UnknownRelocation {
                        r_type,
                        section: target.0,
                        offset: r_offset,
                    });
                };
                if kind == RelocKind::None {
                    continue;
                }
                let width = kind.width() as u64;
                if r_offset
                    .checked_add(width)
                    .is_none_or(|end| end > section_size)
                {
                    return Err(LoadError::RelocationOutsideSection {
                        section: target.0,
                        offset: r_offset,
                    });
                }
                let at = section_offset + r_offset as usize;
                let p = base[segment.index()].wrapping_add(at as u64);
                let a = rela.r_addend(e);
                let s = match self.symbol_value(rela.r_sym(e, false), layout, base, &mut resolve)? {
                    Some(s) => s,
                    None => unresolved_weak(kind, p, a),
                };
                let place = &mut images[segment.index()][at..];
                reloc::apply(kind, place, p, s, a).map_err(|error| LoadError::BadRelocation {
                    section: target.0,
                    offset: r_offset,
                    error,
                })?;
            }
        }
        Ok(images)
    }

    /// The value S of the symbol at `index` of the symbol table; `None` for a weak undefined
    /// symbol nothing defines.
    fn symbol_value(
        &self,
        index: u32,
        layout: &Layout,
        base: [u64; 3],
        resolve: &mut impl FnMut(&str) -> Option<u64>,
    ) -> Result<Option<u64>, LoadError> {
        let e = LE;
        let index = SymbolIndex(index as usize);
        let symbol = self
            .symbols
            .symbol(index)
            .map_err(|_| LoadError::SymbolOutsideFile { symbol: index.0 })?;
        if index.0 == 0 {
            // STN_UNDEF: the value is 0 (AAELF64: S is 0 for relocations without a symbol).
            return Ok(Some(0));
        }
        if symbol.is_undefined(e) {
            let name = self.name(index, symbol)?;
            return match resolve(name) {
                Some(value) => Ok(Some(value)),
                None if symbol.is_weak() => Ok(None),
                None => Err(LoadError::Unresolved {
                    symbol: String::from(name),
                }),
            };
        }
        let (segment, offset) = self.place_of(index, symbol, layout)?;
        Ok(Some(match segment {
            Some(segment) => base[segment.index()].wrapping_add(offset),
            None => offset,
        }))
    }

    /// A defined symbol's segment and offset in it, or `(None, value)` for an absolute one.
    fn place_of(
        &self,
        index: SymbolIndex,
        symbol: &Sym64<LE>,
        layout: &Layout,
    ) -> Result<(Option<Segment>, u64), LoadError> {
        let e = LE;
        if symbol.is_absolute(e) {
            return Ok((None, symbol.st_value(e)));
        }
        if symbol.is_common(e) {
            return Err(LoadError::Unsupported {
                what: "a common symbol (compile with -fno-common)",
                index: index.0,
            });
        }
        let outside = LoadError::SymbolOutsideSection { symbol: index.0 };
        let section = self
            .symbols
            .symbol_section(e, symbol, index)
            .map_err(|_| outside.clone())?
            .ok_or(outside.clone())?;
        let header: &SectionHeader64<LE> = self
            .sections
            .section(section)
            .map_err(|_| outside.clone())?;
        let Some((segment, offset)) = layout.placed.get(section.0).copied().flatten() else {
            return Err(LoadError::Malformed {
                what: "a symbol in a section that is not loaded",
                index: index.0,
            });
        };
        let value = symbol.st_value(e);
        if value > header.sh_size(e) {
            return Err(outside);
        }
        Ok((Some(segment), offset as u64 + value))
    }

    fn name(&self, index: SymbolIndex, symbol: &Sym64<LE>) -> Result<&'d str, LoadError> {
        self.symbols
            .symbol_name(LE, symbol)
            .ok()
            .and_then(|bytes| core::str::from_utf8(bytes).ok())
            .ok_or(LoadError::SymbolOutsideFile { symbol: index.0 })
    }
}

/// S for a weak undefined symbol nothing defines (AAELF64, "Relocation"): 0 for absolute
/// relocations, the place for PC-relative ones, and for a `B` or `BL` the next instruction (the
/// call becomes a branch to the next instruction).
fn unresolved_weak(kind: RelocKind, p: u64, a: i64) -> u64 {
    match kind {
        RelocKind::Call26 | RelocKind::Jump26 => p.wrapping_add(4).wrapping_sub(a as u64),
        RelocKind::Prel64
        | RelocKind::Prel32
        | RelocKind::Prel16
        | RelocKind::AdrPrelLo21
        | RelocKind::AdrPrelPgHi21
        | RelocKind::AdrPrelPgHi21Nc
        | RelocKind::TstBr14
        | RelocKind::CondBr19 => p,
        _ => 0,
    }
}

/// The identification bytes: magic, class, byte order and version, each its own error.
fn check_ident(data: &[u8]) -> Result<(), LoadError> {
    let ident = data.get(..16).ok_or(LoadError::NotElf)?;
    if ident[..4] != elf::ELFMAG {
        return Err(LoadError::NotElf);
    }
    if ident[4] != elf::ELFCLASS64.0 {
        return Err(LoadError::WrongClass { found: ident[4] });
    }
    if ident[5] != elf::ELFDATA2LSB.0 {
        return Err(LoadError::WrongByteOrder { found: ident[5] });
    }
    if ident[6] != elf::EV_CURRENT.0 {
        return Err(LoadError::NotElf);
    }
    if data.len() < core::mem::size_of::<FileHeader64<LE>>() {
        return Err(LoadError::NotElf);
    }
    Ok(())
}
