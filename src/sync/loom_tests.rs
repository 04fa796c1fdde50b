//! Model checks of the cross-CPU protocols: `loom` runs each model in every interleaving of its
//! threads (and every value a load may return under the C++ memory model), up to a preemption
//! bound. Run with `RUSTFLAGS="--cfg loom" cargo test --release --lib sync::loom_tests`.
//!
//! A CPU waits as the kernel's do, `WFE` in a loop, `while !condition { wfe() }`, and every state
//! change another CPU waits for is followed by a `DSB; SEV` to it: here `WFE` is `park` and `SEV`
//! is `unpark`, whose token is the event register (an `SEV` before the `WFE` makes it return at
//! once). A CPU left waiting with no event to come is a deadlock, which loom reports: the models
//! also prove that no wake-up is lost. Spinning with `yield_now` instead cannot be explored: with
//! two CPUs spinning at once loom schedules them against each other forever (three threads, two
//! of them spinning on a flag the third sets, exceed loom's branch limit at a preemption bound of
//! 2), and bounded polls multiply the interleavings.
//!
//! An `unpark` orders what the waker did before it ahead of what the woken thread does after its
//! `park` (as the `DSB` before the `SEV` does), so it can hide a missing acquire on the paths where
//! a CPU sees the state only after being woken; loom also runs the paths where it sees the state
//! between the other CPU's store and its `SEV`, which is where the protocols' own orderings are
//! checked.
//!
//! The preemption bound is `LOOM_MAX_PREEMPTIONS` when set, else the one each model names.

use loom::sync::Arc;
use loom::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use loom::thread::{self, Thread, park as wfe};

/// Explores `f` in every interleaving with at most `preemptions` forced switches (unless
/// `LOOM_MAX_PREEMPTIONS` says otherwise).
fn model(preemptions: usize, f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound.get_or_insert(preemptions);
    builder.check(f);
}

/// `SEV` to each of `cpus`. It starts with a yield: loom schedules other threads only at its own
/// operations, and an `unpark` is none, so without it a store and the `SEV` after it would be one
/// step, and no CPU would ever see the store before it is woken (`unpark` orders the waker's
/// stores before the woken thread's loads, which would hide a missing release or acquire).
fn sev(cpus: &[Thread]) {
    thread::yield_now();
    for cpu in cpus {
        cpu.unpark();
    }
}

mod rendezvous {
    use super::*;
    use crate::sync::rendezvous::Rendezvous;

    /// A participant's side: waits for round `round` to start, then takes part in it, waking
    /// `leader` when it arrives. `entered` is set before it arrives (so a leader that saw the
    /// arrival sees it), `arrived` when it did (in the `wake` that follows a successful arrival).
    fn take_part(
        rv: &Rendezvous,
        cpu: usize,
        round: usize,
        leader: &Thread,
        entered: &AtomicBool,
        arrived: &AtomicBool,
    ) {
        while rv.current_round() < round {
            wfe();
        }
        entered.store(true, Ordering::Relaxed);
        rv.participate(cpu, wfe, || {
            arrived.store(true, Ordering::Release);
            sev(core::slice::from_ref(leader));
        });
    }

    /// A round with a leader and two participants (CPUs 1 and 2), the leader waiting as long as
    /// it takes, proves: the round succeeds; `change` runs only once both participants are inside
    /// `participate` (each entered it, and none has returned from it); no participant returns
    /// before the change ran, and each, once released, sees the change's Relaxed store (the
    /// release of `released`, acquired by the participants, orders it); no CPU sleeps through the
    /// wake-up it waits for. Preemption bound 3.
    #[test]
    fn change_runs_with_everyone_stopped_and_is_seen_after() {
        model(3, || {
            let rv = Arc::new(Rendezvous::new());
            let changed = Arc::new(AtomicBool::new(false));
            // Participants that returned from `participate`: read and written by RMWs only, so
            // each access sees the newest value (no stale read can hide an early return).
            let left = Arc::new(AtomicUsize::new(0));
            let entered: Arc<[AtomicBool; 3]> =
                Arc::new(core::array::from_fn(|_| AtomicBool::new(false)));
            let leader = thread::current();
            let workers: Vec<_> = (1..3)
                .map(|cpu| {
                    let (rv, changed, left, entered, leader) = (
                        rv.clone(),
                        changed.clone(),
                        left.clone(),
                        entered.clone(),
                        leader.clone(),
                    );
                    thread::spawn(move || {
                        let arrived = AtomicBool::new(false);
                        take_part(&rv, cpu, 1, &leader, &entered[cpu], &arrived);
                        assert!(
                            arrived.load(Ordering::Relaxed),
                            "CPU {cpu} did not join round 1"
                        );
                        assert!(
                            changed.load(Ordering::Relaxed),
                            "CPU {cpu} released before the change, or does not see it"
                        );
                        left.fetch_add(1, Ordering::AcqRel);
                    })
                })
                .collect();
            let others: Vec<Thread> = workers.iter().map(|w| w.thread().clone()).collect();
            let mut ran = false;
            let result = rv.lead(
                0b110,
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
                    wfe();
                    true
                },
                || sev(&others),
            );
            assert_eq!(result, Ok(()));
            assert!(ran);
            for w in workers {
                w.join().unwrap();
            }
            assert_eq!(left.load(Ordering::Relaxed), 2);
            assert_eq!(rv.current_round(), 1);
        });
    }

    /// A round given up, then the next one, with CPU 1 taking part in round 1 only and CPU 2
    /// (also in `others`) in round 2 only, proves: round 1, given up once CPU 1 arrived, fails
    /// naming CPU 2 and does not run its change, and CPU 1 is let go (its wait ends); round 2,
    /// given up once CPU 2 arrived, fails naming CPU 1 (its arrival for round 1 is not counted)
    /// and does not run its change, and CPU 2 is let go. Preemption bound 3.
    #[test]
    fn a_round_given_up_lets_go_and_its_arrivals_do_not_count_in_the_next() {
        model(3, || {
            let rv = Arc::new(Rendezvous::new());
            // Set by each CPU's `wake` after its arrival; the leader gives up once it is set.
            let arrived: Arc<[AtomicBool; 3]> =
                Arc::new(core::array::from_fn(|_| AtomicBool::new(false)));
            let leader = thread::current();
            let workers: Vec<_> = [(1, 1), (2, 2)]
                .into_iter()
                .map(|(cpu, round)| {
                    let (rv, arrived, leader) = (rv.clone(), arrived.clone(), leader.clone());
                    thread::spawn(move || {
                        let entered = AtomicBool::new(false);
                        take_part(&rv, cpu, round, &leader, &entered, &arrived[cpu]);
                    })
                })
                .collect();
            let others: Vec<Thread> = workers.iter().map(|w| w.thread().clone()).collect();
            // Gives up at the first poll after the one that saw `cpu`'s arrival: the leader's
            // check of `arrived` in between then includes it (the flag's acquire follows the
            // arrival), so the error names the other CPU whatever the timing.
            let give_up_after_arrival = |cpu: usize| {
                let arrived = arrived.clone();
                let mut seen = false;
                move || {
                    if seen {
                        return false;
                    }
                    seen = arrived[cpu].load(Ordering::Acquire);
                    if !seen {
                        wfe();
                    }
                    true
                }
            };
            let first = rv.lead(
                0b110,
                || panic!("change of round 1, given up"),
                give_up_after_arrival(1),
                || sev(&others),
            );
            assert_eq!(first, Err(2));
            let second = rv.lead(
                0b110,
                || panic!("change of round 2, given up"),
                give_up_after_arrival(2),
                || sev(&others),
            );
            assert_eq!(second, Err(1));
            for w in workers {
                w.join().unwrap();
            }
            assert_eq!(rv.current_round(), 2);
        });
    }
}

mod publish {
    use super::*;
    use crate::sync::publish::Publication;
    use std::sync::OnceLock;

    const CPUS: usize = 3;
    const WRITERS: usize = 2;

    /// What each CPU saw of each writer's code in its latest `synchronise`.
    type Snapshots = [[AtomicU64; WRITERS]; CPUS];

    /// Two writers (CPUs 0 and 1) and an answering CPU (2): each writer stores its code (a
    /// Relaxed store of its version), requests, wakes the others (its IPI), and waits for the two
    /// other CPUs, answering its own pending requests meanwhile (and after, until both writers are
    /// done), so writers waiting for each other cannot deadlock; each answer wakes the others.
    /// Proves: every wait succeeds (no CPU sleeps through a request or an answer), and when a
    /// writer's wait returns, each other CPU's snapshot taken in its `synchronise` shows that
    /// writer's code: every other CPU synchronised after the code was written. Preemption bound 2.
    #[test]
    fn after_wait_every_other_cpu_synchronised_after_the_code_was_written() {
        model(2, || {
            let publication = Arc::new(Publication::<CPUS>::new());
            let code: Arc<[AtomicU64; WRITERS]> =
                Arc::new(core::array::from_fn(|_| AtomicU64::new(0)));
            let seen: Arc<Snapshots> = Arc::new(core::array::from_fn(|_| {
                core::array::from_fn(|_| AtomicU64::new(0))
            }));
            let done = Arc::new(AtomicUsize::new(0));
            // Every CPU's thread, for the wake-ups: set once all are spawned, before any starts.
            let cpus: Arc<OnceLock<Vec<Thread>>> = Arc::new(OnceLock::new());
            let threads: Vec<_> = (0..CPUS)
                .map(|cpu| {
                    let (publication, code, seen, done, cpus) = (
                        publication.clone(),
                        code.clone(),
                        seen.clone(),
                        done.clone(),
                        cpus.clone(),
                    );
                    thread::spawn(move || {
                        let cpus = loop {
                            match cpus.get() {
                                Some(cpus) => break cpus,
                                None => wfe(),
                            }
                        };
                        let others: Vec<Thread> = (0..CPUS)
                            .filter(|&other| other != cpu)
                            .map(|other| cpus[other].clone())
                            .collect();
                        let serve = || {
                            if publication.pending(cpu) {
                                publication.answer(cpu, || {
                                    for (writer, code) in code.iter().enumerate() {
                                        let version = code.load(Ordering::Relaxed);
                                        seen[cpu][writer].store(version, Ordering::Relaxed);
                                    }
                                });
                                sev(&others);
                            }
                        };
                        if cpu < WRITERS {
                            let version = cpu as u64 + 1;
                            code[cpu].store(version, Ordering::Relaxed);
                            let request = publication.request();
                            sev(&others);
                            let mask = ((1u64 << CPUS) - 1) & !(1 << cpu);
                            let waited = publication.wait(request, mask, || {
                                serve();
                                wfe();
                                true
                            });
                            assert_eq!(waited, Ok(()));
                            for other in (0..CPUS).filter(|&other| other != cpu) {
                                assert!(
                                    seen[other][cpu].load(Ordering::Relaxed) >= version,
                                    "CPU {other} answered writer {cpu} before seeing its code"
                                );
                            }
                            done.fetch_add(1, Ordering::Release);
                            sev(&others);
                        }
                        loop {
                            serve();
                            if done.load(Ordering::Acquire) == WRITERS {
                                break;
                            }
                            wfe();
                        }
                    })
                })
                .collect();
            let all: Vec<Thread> = threads.iter().map(|t| t.thread().clone()).collect();
            cpus.set(all.clone()).unwrap();
            sev(&all);
            for t in threads {
                t.join().unwrap();
            }
        });
    }
}
