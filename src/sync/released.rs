//! Packs an allocator released but that are still mapped, waiting to be unmapped: the unmapping
//! (break-before-make with a broadcast TLBI, which waits for every CPU) is done after the
//! allocator's lock is dropped, so other CPUs can allocate and free meanwhile.
//!
//! The protocol: the allocator pushes a pack while it holds its own lock; whoever drains (the
//! freeing CPU once it dropped the allocator's lock, or any CPU about to map a pack, before it
//! maps) holds the queue's lock until every pack it took is unmapped. So when a drain returns,
//! every pack pushed before it started is unmapped, by this CPU or by the one whose drain it
//! waited for, and a VA is never mapped for a new owner while a stale unmap of it is pending.
//!
//! The lock is the caller's ([`QueueLock`]): the manager's masks interrupts; the model checks
//! (`loom_tests.rs`) use loom's.

use core::ops::DerefMut;

/// The queued packs (at most `N`).
pub struct Queue<const N: usize> {
    packs: [u64; N],
    len: usize,
}

impl<const N: usize> Queue<N> {
    /// Empty.
    pub const fn new() -> Self {
        Self {
            packs: [0; N],
            len: 0,
        }
    }
}

impl<const N: usize> Default for Queue<N> {
    fn default() -> Self {
        Self::new()
    }
}

/// A lock around a [`Queue`].
pub trait QueueLock<const N: usize> {
    /// Held.
    type Guard<'a>: DerefMut<Target = Queue<N>>
    where
        Self: 'a;
    /// Takes it.
    fn lock(&self) -> Self::Guard<'_>;
}

/// The queue and its lock.
pub struct ReleaseQueue<L> {
    lock: L,
}

impl<L> ReleaseQueue<L> {
    /// Over `lock` (holding an empty queue).
    pub const fn new(lock: L) -> Self {
        Self { lock }
    }
}

impl<L> ReleaseQueue<L> {
    /// Queues the released pack at `va` (called with the allocator's lock held). A pack is
    /// released at most once before it is unmapped, so at most `N` are queued; one more would
    /// only stay mapped (BRK-filled, RX, which the audit accepts): returns false then.
    pub fn push<const N: usize>(&self, va: u64) -> bool
    where
        L: QueueLock<N>,
    {
        let mut queue = self.lock.lock();
        if queue.len >= N {
            return false;
        }
        let len = queue.len;
        queue.packs[len] = va;
        queue.len += 1;
        true
    }

    /// Unmaps every queued pack with `unmap`, holding the queue's lock until all are: when this
    /// returns, every pack pushed before it began is unmapped.
    pub fn drain<const N: usize>(&self, mut unmap: impl FnMut(u64))
    where
        L: QueueLock<N>,
    {
        let mut queue = self.lock.lock();
        let len = core::mem::replace(&mut queue.len, 0);
        for i in 0..len {
            unmap(queue.packs[i]);
        }
    }
}
