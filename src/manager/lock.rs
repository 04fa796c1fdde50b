//! The manager's locks: `spin` locks that mask this CPU's interrupts while held, so that an
//! interrupt handler on this CPU that allocates, frees or pokes never waits for a lock its own CPU
//! holds (Linux `spin_lock_irqsave`), and that, while they wait, let the platform serve the other
//! CPUs ([`Platform::relax`]): a CPU waiting for a lock with interrupts masked still joins a
//! stop-the-world round and answers a publication request, so no CPU waits for one that waits
//! for it.

use core::marker::PhantomData;
use core::mem::ManuallyDrop;
use core::ops::{Deref, DerefMut};

use super::Platform;

/// `spin`'s relax strategy: the platform's [`Platform::relax`].
pub(crate) struct Relax<P>(PhantomData<P>);

impl<P: Platform> spin::RelaxStrategy for Relax<P> {
    #[inline]
    fn relax() {
        P::relax();
    }
}

/// A mutex taken with interrupts masked.
pub(crate) struct IrqMutex<P: Platform, T> {
    inner: spin::mutex::Mutex<T, Relax<P>>,
}

/// Held: interrupts masked on this CPU until it is dropped.
pub(crate) struct IrqMutexGuard<'a, P: Platform, T> {
    guard: ManuallyDrop<spin::mutex::MutexGuard<'a, T, Relax<P>>>,
    saved: u64,
}

impl<P: Platform, T> IrqMutex<P, T> {
    pub(crate) const fn new(value: T) -> Self {
        Self {
            inner: spin::mutex::Mutex::new(value),
        }
    }

    /// Masks this CPU's interrupts, then takes the lock (relaxing through the platform).
    pub(crate) fn lock(&self) -> IrqMutexGuard<'_, P, T> {
        let saved = P::mask_interrupts();
        IrqMutexGuard {
            guard: ManuallyDrop::new(self.inner.lock()),
            saved,
        }
    }
}

impl<P: Platform, T> IrqMutex<P, T> {
    /// Takes the lock on a CPU whose interrupts `_masked` keeps masked (a held guard of another
    /// of these locks), without masking again: the guard only unlocks, and cannot outlive the
    /// mask it relies on.
    pub(super) fn lock_masked<'a>(
        &'a self,
        _masked: Masked<'a>,
    ) -> spin::mutex::MutexGuard<'a, T, Relax<P>> {
        self.inner.lock()
    }
}

/// Proof that interrupts are masked on this CPU for `'a`: borrowed from a held guard.
#[derive(Clone, Copy)]
pub(super) struct Masked<'a>(PhantomData<&'a ()>);

impl Masked<'_> {
    /// Only for a guard that masks interrupts while it is held, borrowed for the lifetime.
    pub(super) const fn new() -> Self {
        Self(PhantomData)
    }
}

impl<P: Platform, T> Deref for IrqMutexGuard<'_, P, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<P: Platform, T> DerefMut for IrqMutexGuard<'_, P, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

impl<P: Platform, T> Drop for IrqMutexGuard<'_, P, T> {
    fn drop(&mut self) {
        // SAFETY: dropped once, here; the guard is not used after.
        unsafe { ManuallyDrop::drop(&mut self.guard) };
        P::restore_interrupts(self.saved);
    }
}

/// A reader-writer lock taken with interrupts masked.
pub(super) struct IrqRwLock<P: Platform, T> {
    inner: spin::rwlock::RwLock<T, Relax<P>>,
}

/// Read-held: interrupts masked on this CPU until it is dropped.
pub(super) struct IrqReadGuard<'a, P: Platform, T> {
    guard: ManuallyDrop<spin::rwlock::RwLockReadGuard<'a, T, Relax<P>>>,
    saved: u64,
}

/// Write-held: interrupts masked on this CPU until it is dropped.
pub(super) struct IrqWriteGuard<'a, P: Platform, T> {
    guard: ManuallyDrop<spin::rwlock::RwLockWriteGuard<'a, T, Relax<P>>>,
    saved: u64,
}

impl<P: Platform, T> IrqRwLock<P, T> {
    pub(super) const fn new(value: T) -> Self {
        Self {
            inner: spin::rwlock::RwLock::new(value),
        }
    }

    /// Masks this CPU's interrupts, then takes the lock for reading.
    pub(super) fn read(&self) -> IrqReadGuard<'_, P, T> {
        let saved = P::mask_interrupts();
        IrqReadGuard {
            guard: ManuallyDrop::new(self.inner.read()),
            saved,
        }
    }

    /// Masks this CPU's interrupts, then takes the lock for writing.
    pub(super) fn write(&self) -> IrqWriteGuard<'_, P, T> {
        let saved = P::mask_interrupts();
        IrqWriteGuard {
            guard: ManuallyDrop::new(self.inner.write()),
            saved,
        }
    }
}

impl<P: Platform, T> Deref for IrqReadGuard<'_, P, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<P: Platform, T> Drop for IrqReadGuard<'_, P, T> {
    fn drop(&mut self) {
        // SAFETY: dropped once, here; the guard is not used after.
        unsafe { ManuallyDrop::drop(&mut self.guard) };
        P::restore_interrupts(self.saved);
    }
}

impl<P: Platform, T> Deref for IrqWriteGuard<'_, P, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<P: Platform, T> DerefMut for IrqWriteGuard<'_, P, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

impl<P: Platform, T> Drop for IrqWriteGuard<'_, P, T> {
    fn drop(&mut self) {
        // SAFETY: dropped once, here; the guard is not used after.
        unsafe { ManuallyDrop::drop(&mut self.guard) };
        P::restore_interrupts(self.saved);
    }
}

impl<P: Platform, const N: usize> crate::sync::released::QueueLock<N>
    for IrqMutex<P, crate::sync::released::Queue<N>>
{
    type Guard<'a>
        = IrqMutexGuard<'a, P, crate::sync::released::Queue<N>>
    where
        Self: 'a;

    fn lock(&self) -> Self::Guard<'_> {
        IrqMutex::lock(self)
    }
}

/// The magazines' locks (each CPU's, and the shared allocator's) are the manager's: taken with
/// interrupts masked.
impl<P: Platform, T> crate::pack::magazine::MagazineLock<T> for IrqMutex<P, T> {
    type Guard<'a>
        = IrqMutexGuard<'a, P, T>
    where
        Self: 'a;

    fn new(value: T) -> Self {
        IrqMutex::new(value)
    }

    #[inline]
    fn lock(&self) -> Self::Guard<'_> {
        IrqMutex::lock(self)
    }
}
