//! A typed view of a device's register block at a fixed physical address.

use core::{marker::PhantomData, ops::Deref};

/// Register block `T` (a `register_structs!` type) at `base`.
pub struct Mmio<T> {
    base: usize,
    _registers: PhantomData<fn() -> T>,
}

impl<T> Mmio<T> {
    /// # Safety
    /// `base` must be the address of a device whose registers are laid out as `T`, mapped as
    /// Device memory (or the MMU off) for as long as the value is used.
    pub const unsafe fn new(base: usize) -> Self {
        Self {
            base,
            _registers: PhantomData,
        }
    }
}

impl<T> Deref for Mmio<T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: the constructor's contract: `base` points at a live register block of type `T`.
        // tock-registers types only perform volatile accesses through `&self`.
        unsafe { &*(self.base as *const T) }
    }
}
