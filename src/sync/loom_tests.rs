//! Model checks of the cross-CPU protocols: `loom` runs each model in every interleaving of its
//! threads (and every value a load may return under the C++ memory model), up to a preemption
//! bound. Run with `RUSTFLAGS="--cfg loom" cargo test --release --lib sync::loom_tests`.
//!
//! A CPU waits as the kernel's do, `while !condition { WFE }`, and every change another CPU waits
//! for is followed by a `SEV` to it. [`Cpus`] models both: a Relaxed event register per CPU and a
//! loom `park`/`unpark` to sleep and wake. A CPU left asleep with no event to come is a deadlock,
//! which loom reports: the models also prove that no wake-up is lost.
//!
//! Spinning with `yield_now` instead cannot be explored: with two CPUs spinning at once loom
//! schedules them against each other forever (three threads, two of them spinning on a flag the
//! third sets, exceed loom's branch limit at a preemption bound of 2), and bounded polls multiply
//! the interleavings.
//!
//! Weakening any release or acquire of the protocols to Relaxed, dropping one of their wake-ups,
//! or letting a participant leave before the release, makes one of the models fail (checked by
//! mutating the protocols by hand).
//!
//! The preemption bound is `LOOM_MAX_PREEMPTIONS` when set, else the one each model names (2).

use core::cell::Cell;
use loom::sync::Arc;
use loom::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use loom::thread::{self, Thread};
use std::sync::OnceLock;

/// Explores `f` in every interleaving with at most `preemptions` forced switches (unless
/// `LOOM_MAX_PREEMPTIONS` says otherwise).
fn model(preemptions: usize, f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound.get_or_insert(preemptions);
    builder.check(f);
}

/// The model's CPUs: a thread each, and each one's event register.
struct Cpus {
    threads: Vec<Thread>,
    events: Vec<AtomicBool>,
}

impl Cpus {
    /// `SEV` to the CPUs of `mask`: sets their event registers and wakes them. The event store
    /// is Relaxed (an event orders nothing) and is where loom may switch to another CPU, which
    /// then sees what this one did before the `SEV` without being woken: `unpark` orders the
    /// waker's past before the woken thread's future, so without that switch every CPU would see
    /// a change only through it, and a missing release or acquire in the protocol would not
    /// show.
    fn sev(&self, mask: u64) {
        for cpu in (0..self.threads.len()).filter(|&cpu| mask & (1 << cpu) != 0) {
            self.events[cpu].store(true, Ordering::Relaxed);
            self.threads[cpu].unpark();
        }
    }

    /// `WFE` on `cpu`: clears its event register and returns if it was set, else sleeps until a
    /// `SEV` (or returns at once for one it already consumed: a spurious wake-up, which `WFE`
    /// allows).
    fn wfe(&self, cpu: usize) {
        if !self.events[cpu].swap(false, Ordering::Relaxed) {
            thread::park();
        }
    }
}

/// Runs `body(cpu, cpus)` for each of `n` CPUs on a thread of its own and waits for them. The
/// model's own thread only starts and joins them: an `unpark` that reaches a thread blocked in
/// `join` breaks loom, so no CPU may be one that joins.
fn run_cpus(n: usize, body: impl Fn(usize, &Cpus) + Send + Sync + 'static) {
    let body = Arc::new(body);
    let all: Arc<OnceLock<Cpus>> = Arc::new(OnceLock::new());
    let threads: Vec<_> = (0..n)
        .map(|cpu| {
            let (body, all) = (body.clone(), all.clone());
            thread::spawn(move || {
                let cpus = loop {
                    match all.get() {
                        Some(cpus) => break cpus,
                        None => thread::park(),
                    }
                };
                body(cpu, cpus);
            })
        })
        .collect();
    let cpus = Cpus {
        threads: threads.iter().map(|t| t.thread().clone()).collect(),
        events: (0..n).map(|_| AtomicBool::new(false)).collect(),
    };
    let started: Vec<Thread> = cpus.threads.clone();
    if all.set(cpus).is_err() {
        unreachable!("the CPUs are set once");
    }
    for cpu in &started {
        cpu.unpark();
    }
    for t in threads {
        t.join().unwrap();
    }
}

mod rendezvous {
    use super::*;
    use crate::sync::rendezvous::Rendezvous;

    /// The leader's CPU.
    const LEADER: u64 = 0b001;
    /// The participants' CPUs.
    const OTHERS: u64 = 0b110;

    /// A participant's side: waits for round `round` to start, then takes part in it, waking the
    /// leader when it arrives. `entering` runs before it arrives (so a leader that saw the
    /// arrival sees what it did), `arrived` once it did (in the `wake` that follows an arrival).
    fn take_part(
        rv: &Rendezvous,
        cpu: usize,
        round: usize,
        cpus: &Cpus,
        entering: impl FnOnce(),
        arrived: impl Fn(),
    ) {
        while rv.current_round() < round {
            cpus.wfe(cpu);
        }
        entering();
        rv.participate(
            cpu,
            || cpus.wfe(cpu),
            || {
                arrived();
                cpus.sev(LEADER);
            },
        );
    }

    /// A round led by CPU 0 with two participants (CPUs 1 and 2), the leader waiting as long as
    /// it takes, proves: the round succeeds; `change` runs only once both participants are inside
    /// `participate` (each entered it, and none has returned from it); no participant returns
    /// before the change ran, and each, once released, sees the change's Relaxed store (the
    /// release of `released`, acquired by the participants, orders it); no CPU sleeps through the
    /// wake-up it waits for. Preemption bound 2.
    #[test]
    fn change_runs_with_everyone_stopped_and_is_seen_after() {
        model(2, || {
            let rv = Arc::new(Rendezvous::new());
            let changed = AtomicBool::new(false);
            // Participants that returned from `participate`: read and written by RMWs only, so
            // each access sees the newest value (no stale read can hide an early return).
            let left = Arc::new(AtomicUsize::new(0));
            let entered: [AtomicBool; 3] = core::array::from_fn(|_| AtomicBool::new(false));
            let shared = (rv.clone(), left.clone());
            run_cpus(3, move |cpu, cpus| {
                if cpu != 0 {
                    let joined = Cell::new(false);
                    take_part(
                        &rv,
                        cpu,
                        1,
                        cpus,
                        || entered[cpu].store(true, Ordering::Relaxed),
                        || joined.set(true),
                    );
                    assert!(joined.get(), "CPU {cpu} did not join round 1");
                    assert!(
                        changed.load(Ordering::Relaxed),
                        "CPU {cpu} released before the change, or does not see it"
                    );
                    left.fetch_add(1, Ordering::AcqRel);
                    return;
                }
                let mut ran = false;
                let result = rv.lead(
                    OTHERS,
                    || {
                        assert!(entered[1].load(Ordering::Relaxed), "CPU 1 not stopped");
                        assert!(entered[2].load(Ordering::Relaxed), "CPU 2 not stopped");
                        assert_eq!(
                            left.fetch_add(0, Ordering::AcqRel),
                            0,
                            "a CPU left before the change"
                        );
                        changed.store(true, Ordering::Relaxed);
                        ran = true;
                    },
                    || {
                        cpus.wfe(cpu);
                        true
                    },
                    || cpus.sev(OTHERS),
                );
                assert_eq!(result, Ok(()));
                assert!(ran);
            });
            let (rv, left) = shared;
            assert_eq!(left.load(Ordering::Relaxed), 2);
            assert_eq!(rv.current_round(), 1);
        });
    }

    /// Two rounds led by CPU 0, CPU 1 taking part in round 1 only and CPU 2 (also in `others`)
    /// in round 2 only, proves: round 1, given up once CPU 1 arrived, fails naming CPU 2 and does
    /// not run its change, and CPU 1 is let go (its wait ends); round 2, given up once CPU 2
    /// arrived, fails naming CPU 1 (its arrival for round 1 is not counted) and does not run its
    /// change, and CPU 2 is let go. Preemption bound 2.
    #[test]
    fn a_round_given_up_lets_go_and_its_arrivals_do_not_count_in_the_next() {
        model(2, || {
            let rv = Arc::new(Rendezvous::new());
            // Set by each CPU's `wake` after its arrival; the leader gives up once it is set.
            let arrived: [AtomicBool; 3] = core::array::from_fn(|_| AtomicBool::new(false));
            let shared = rv.clone();
            run_cpus(3, move |cpu, cpus| {
                if cpu != 0 {
                    take_part(
                        &rv,
                        cpu,
                        cpu,
                        cpus,
                        || {},
                        || arrived[cpu].store(true, Ordering::Release),
                    );
                    return;
                }
                // Gives up at the first poll after the one that saw `cpu`'s arrival: the
                // leader's check of `arrived` in between then includes it (the flag's acquire
                // follows the arrival), so the error names the other CPU whatever the timing.
                let arrived = &arrived;
                let give_up_after_arrival = |waited_for: usize| {
                    let mut seen = false;
                    move || {
                        if seen {
                            return false;
                        }
                        seen = arrived[waited_for].load(Ordering::Acquire);
                        if !seen {
                            cpus.wfe(cpu);
                        }
                        true
                    }
                };
                let first = rv.lead(
                    OTHERS,
                    || panic!("change of round 1, given up"),
                    give_up_after_arrival(1),
                    || cpus.sev(OTHERS),
                );
                assert_eq!(first, Err(2));
                let second = rv.lead(
                    OTHERS,
                    || panic!("change of round 2, given up"),
                    give_up_after_arrival(2),
                    || cpus.sev(OTHERS),
                );
                assert_eq!(second, Err(1));
            });
            assert_eq!(shared.current_round(), 2);
        });
    }
}

mod publish {
    use super::*;
    use crate::sync::publish::Publication;

    const CPUS: usize = 3;
    /// The writers (CPUs 0 and 1); CPU 2 only answers.
    const WRITERS: usize = 2;
    /// The requests made in all: one per writer.
    const REQUESTS: u64 = WRITERS as u64;

    /// Two writers (CPUs 0 and 1) and an answering CPU (2): each writer writes its code (a
    /// Relaxed store), requests, wakes the others (its IPI), and waits for the two other CPUs,
    /// answering pending requests meanwhile, so writers waiting for each other cannot deadlock;
    /// an answer wakes the writers, and each CPU answers until it has answered both requests.
    /// Proves: every wait succeeds (no CPU sleeps through a request or an answer), and when a
    /// writer's wait returns, each other CPU's snapshot of the code taken in its `synchronise`
    /// shows it: every other CPU synchronised after the code was written. Preemption bound 2.
    #[test]
    fn after_wait_every_other_cpu_synchronised_after_the_code_was_written() {
        model(2, || {
            let publication = Publication::<CPUS>::new();
            // Each writer's code: 1 once written.
            let code: [AtomicU64; WRITERS] = core::array::from_fn(|_| AtomicU64::new(0));
            // What each CPU saw of each (other) writer's code in its latest `synchronise`.
            let seen: [[AtomicU64; WRITERS]; CPUS] =
                core::array::from_fn(|_| core::array::from_fn(|_| AtomicU64::new(0)));
            run_cpus(CPUS, move |cpu, cpus| {
                let me = 1u64 << cpu;
                let others = ((1u64 << CPUS) - 1) & !me;
                let serve = || {
                    if publication.pending(cpu) {
                        publication.answer(cpu, || {
                            for writer in (0..WRITERS).filter(|&writer| writer != cpu) {
                                let version = code[writer].load(Ordering::Relaxed);
                                seen[cpu][writer].store(version, Ordering::Relaxed);
                            }
                        });
                        cpus.sev(((1 << WRITERS) - 1) & !me);
                    }
                };
                if cpu < WRITERS {
                    code[cpu].store(1, Ordering::Relaxed);
                    let request = publication.request();
                    cpus.sev(others);
                    let waited = publication.wait(request, others, || {
                        serve();
                        cpus.wfe(cpu);
                        true
                    });
                    assert_eq!(waited, Ok(()));
                    for other in (0..CPUS).filter(|&other| other != cpu) {
                        assert_eq!(
                            seen[other][cpu].load(Ordering::Relaxed),
                            1,
                            "CPU {other} answered writer {cpu} before seeing its code"
                        );
                    }
                }
                loop {
                    serve();
                    if publication.answered(cpu) == REQUESTS {
                        break;
                    }
                    cpus.wfe(cpu);
                }
            });
        });
    }
}

mod released {
    //! The released-pack queue under the manager's discipline: a pack is pushed while the
    //! allocator's lock is held; the freeing CPU drains after dropping it; a CPU about to map a
    //! pack again drains first, under the allocator's lock.
    use super::*;
    use crate::sync::released::{Queue, QueueLock, ReleaseQueue};
    use loom::sync::{Mutex, MutexGuard};

    /// loom's mutex as the queue's lock.
    struct LoomLock(Mutex<Queue<4>>);

    impl QueueLock<4> for LoomLock {
        type Guard<'a> = MutexGuard<'a, Queue<4>>;
        fn lock(&self) -> Self::Guard<'_> {
            self.0.lock().unwrap()
        }
    }

    /// The model's state: the queue, the allocator's lock with whether pack P is free (released
    /// by its owner), and each pack's mapping (a counter: 1 mapped, 0 not).
    struct Packs {
        queue: ReleaseQueue<LoomLock>,
        allocator: Mutex<[bool; 2]>,
        mapped: [AtomicUsize; 2],
        unmaps: [AtomicUsize; 2],
    }

    impl Packs {
        fn unmap(&self, va: u64) {
            let pack = va as usize;
            let was = self.mapped[pack].fetch_sub(1, Ordering::Relaxed);
            assert_eq!(was, 1, "pack {pack} unmapped while not mapped");
            self.unmaps[pack].fetch_add(1, Ordering::Relaxed);
        }

        /// A free that empties pack `pack`: released under the allocator's lock, unmapped after.
        fn free(&self, pack: usize) {
            {
                let mut free = self.allocator.lock().unwrap();
                free[pack] = true;
                assert!(self.queue.push(pack as u64));
            }
            self.queue.drain(|va| self.unmap(va));
        }

        /// An allocation that wants pack `pack` mapped again, once its owner released it: under
        /// the allocator's lock, drains first, then maps. Returns whether it did.
        fn alloc_again(&self, pack: usize) -> bool {
            let mut free = self.allocator.lock().unwrap();
            if !free[pack] {
                return false;
            }
            self.queue.drain(|va| self.unmap(va));
            let was = self.mapped[pack].fetch_add(1, Ordering::Relaxed);
            assert_eq!(
                was, 0,
                "pack {pack} mapped again while its old mapping was still there"
            );
            free[pack] = false;
            true
        }
    }

    /// Two CPUs each free a pack (0 and 1) while a third maps pack 0 again as soon as it is
    /// released, proves: each released pack is unmapped exactly once (by whichever CPU drained
    /// it); the reallocating CPU never maps pack 0 while its old mapping is still there, though
    /// the freeing CPU's own drain may not have run yet; and no CPU unmaps the new mapping.
    /// Preemption bound 2. (A drain that lets the lock go before its unmaps are done fails it.)
    #[test]
    fn a_released_pack_is_unmapped_once_and_before_it_is_mapped_again() {
        model(2, || {
            let packs = Arc::new(Packs {
                queue: ReleaseQueue::new(LoomLock(Mutex::new(Queue::new()))),
                allocator: Mutex::new([false; 2]),
                mapped: [AtomicUsize::new(1), AtomicUsize::new(1)],
                unmaps: [AtomicUsize::new(0), AtomicUsize::new(0)],
            });
            let spawn = |f: fn(&Packs)| {
                let packs = packs.clone();
                thread::spawn(move || f(&packs))
            };
            let threads = [
                spawn(|p| p.free(0)),
                spawn(|p| p.free(1)),
                spawn(|p| {
                    let _ = p.alloc_again(0);
                }),
            ];
            for t in threads {
                t.join().unwrap();
            }
            let reused = packs.mapped[0].load(Ordering::Relaxed);
            assert_eq!(
                packs.unmaps[0].load(Ordering::Relaxed),
                1,
                "pack 0 unmapped once"
            );
            assert_eq!(
                packs.unmaps[1].load(Ordering::Relaxed),
                1,
                "pack 1 unmapped once"
            );
            assert_eq!(packs.mapped[1].load(Ordering::Relaxed), 0);
            // Pack 0 is mapped again exactly when the third CPU found it released.
            assert!(reused <= 1);
        });
    }
}

mod gate {
    //! The poke gate under the manager's discipline: pokers enter, look the pack up, write its
    //! frame and leave; the unmapper closes, clears the pack's entry, frees (reuses) the frame and
    //! opens.
    use super::*;
    use crate::sync::gate::Gate;
    use loom::cell::UnsafeCell;

    const CPUS: usize = 3;
    /// The CPU that unmaps; the others poke.
    const UNMAPPER: usize = 2;

    /// The gate, the pack's table entry (1: mapped) and its frame: a plain cell per poking CPU
    /// (each writes its own bytes), so that loom reports a poke's write and the frame's reuse
    /// that are not ordered as a data race.
    struct Pool {
        gate: Gate<CPUS>,
        entry: AtomicU64,
        frame: [UnsafeCell<u64>; UNMAPPER],
    }

    // SAFETY: the frame is only accessed as the protocol under test allows; loom checks it.
    unsafe impl Sync for Pool {}
    // SAFETY: as above.
    unsafe impl Send for Pool {}

    /// Two CPUs poke the pack while a third unmaps it, waiting in `WFE` (leaving and opening
    /// are followed by a `SEV`). Proves: a poke that found the pack mapped writes a frame that
    /// is not yet reused, and the reuse never races with a poke's write (loom's data-race check);
    /// a poke after the unmap finds the entry clear; nobody deadlocks. Preemption bound 2.
    #[test]
    fn no_poke_writes_a_frame_after_its_pack_is_unmapped() {
        model(2, || {
            let pool = Arc::new(Pool {
                gate: Gate::new(),
                entry: AtomicU64::new(1),
                frame: [UnsafeCell::new(0), UnsafeCell::new(0)],
            });
            let all = (1u64 << CPUS) - 1;
            run_cpus(CPUS, move |cpu, cpus| {
                let others = all & !(1 << cpu);
                if cpu == UNMAPPER {
                    pool.gate.close(|| cpus.wfe(cpu));
                    pool.entry.store(0, Ordering::Relaxed);
                    // The frame given back and reused by its next owner.
                    for word in &pool.frame {
                        // SAFETY: the gate orders this against every poke (loom checks it).
                        word.with_mut(|word| unsafe { *word = u64::MAX });
                    }
                    pool.gate.open();
                    cpus.sev(others);
                } else {
                    pool.gate
                        .enter(cpu, || cpus.wfe(cpu), || cpus.sev(1 << UNMAPPER));
                    if pool.entry.load(Ordering::Acquire) == 1 {
                        pool.frame[cpu].with_mut(|frame| {
                            // SAFETY: the gate orders this against the reuse (loom checks it).
                            let old = unsafe { *frame };
                            assert_ne!(old, u64::MAX, "CPU {cpu} poked a reused frame");
                            unsafe { *frame = old + 1 };
                        });
                    }
                    pool.gate.leave(cpu);
                    cpus.sev(1 << UNMAPPER);
                }
            });
        });
    }
}
