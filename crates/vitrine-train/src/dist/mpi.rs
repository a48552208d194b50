//! The MPI transport (cargo feature `mpi`, rsmpi over the system's MPI library): one
//! process per rank, started by `mpirun`/`mpiexec` or `srun`.
//!
//! Only the thread that initialised MPI ever calls it (the trainer's own thread; Burn's
//! worker threads never do), so MPI is asked for `MPI_THREAD_FUNNELED`.
//!
//! MPI's blocking calls have no deadline, and a rank that dies is noticed by the launcher,
//! not by the others' calls: mpirun then ends the job and names the rank, sending the
//! others SIGTERM (SIGKILL a second later), on which each says why it stops. A rank that
//! hangs (stopped, swapping, deadlocked) is noticed by no one. So each all-reduce is
//! started non-blocking and polled; past the timeout the waiting rank prints why and calls
//! `MPI_Abort`, which ends every rank of the job. Rank 0 writes checkpoints atomically, so
//! the last complete one survives either way.

use std::time::{Duration, Instant};

use burn::tensor::backend::AutodiffBackend;
use mpi::collective::SystemOperation;
use mpi::environment::Threading;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

use super::{no_answer, Peer, Transport};
use crate::error::{Result, TrainError};

/// Exit code of a job that a rank ended (timeout, or an error on that rank alone).
const ABORT_CODE: i32 = 1;

/// Runs `work` as this process's rank. An error on any rank ends the whole job through
/// `MPI_Abort` (after the rank prints it): the other ranks would otherwise wait in their
/// next all-reduce until the timeout, or in `MPI_Finalize` for ever.
pub(super) fn launch<B, R, F>(device: B::Device, timeout: Duration, work: F) -> Result<R>
where
    B: AutodiffBackend,
    F: Fn(Option<Peer>, B::Device) -> Result<R>,
{
    let (universe, provided) =
        ::mpi::initialize_with_threading(Threading::Funneled).ok_or_else(|| {
            TrainError::Collective("MPI was already initialised in this process".into())
        })?;
    if provided < Threading::Funneled {
        return Err(TrainError::Collective(format!(
            "the MPI library offers thread level {provided:?}; training needs Funneled (Burn runs its own threads beside the one that calls MPI)"
        )));
    }
    let world = universe.world();
    let (rank, size) = (world.rank() as usize, world.size() as usize);
    if size == 1 {
        return work(None, device);
    }
    say_why_on_sigterm(rank, size);
    let peer = Peer {
        rank,
        world: size,
        timeout,
        transport: Transport::Mpi,
    };
    match work(Some(peer), device) {
        // Dropping the universe calls MPI_Finalize, which every rank reaches.
        Ok(r) => Ok(r),
        Err(e) => {
            eprintln!("error: MPI rank {rank} of {size}: {e}; ending every rank of the job");
            world.abort(ABORT_CODE)
        }
    }
}

/// When the launcher ends this rank (SIGTERM: another rank died, or the job was
/// cancelled), prints why on stderr and exits as SIGTERM would have made it. Without this
/// the rank would vanish without a word, and only the launcher's message would tell.
fn say_why_on_sigterm(rank: usize, size: usize) {
    use signal_hook::consts::SIGTERM;
    // Without the handler the default action (terminate) still applies: no loss.
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGTERM]) else {
        return;
    };
    let _ = std::thread::Builder::new()
        .name("sigterm".into())
        .spawn(move || {
            if signals.forever().next().is_some() {
                eprintln!(
                    "error: MPI rank {rank} of {size}: ended by the launcher (SIGTERM): another rank failed or the job was cancelled (the launcher's message names it); the last complete checkpoint is intact"
                );
                std::process::exit(128 + SIGTERM);
            }
        });
}

/// The element-wise sum of `values` over all ranks, identical on every rank. Past the
/// peer's timeout the job ends (module docs); this never returns without the sum.
pub(super) fn all_reduce_sum(peer: &Peer, what: &str, values: &[f32]) -> Vec<f32> {
    let world = SimpleCommunicator::world();
    let mut sum = vec![0f32; values.len()];
    let started = Instant::now();
    ::mpi::request::scope(|scope| {
        let mut request =
            world.immediate_all_reduce_into(scope, values, &mut sum[..], SystemOperation::sum());
        let mut polls = 0u32;
        loop {
            match request.test() {
                Ok(_) => break,
                Err(pending) => request = pending,
            }
            if started.elapsed() >= peer.timeout {
                eprintln!(
                    "error: distributed training (MPI): {}; ending every rank of the job",
                    no_answer(peer, what)
                );
                // Never returns: the pending request's buffers are never released.
                world.abort(ABORT_CODE);
            }
            // Each test drives MPI's progress engine: spin at first (a step's all-reduce
            // usually completes within microseconds to milliseconds), then back off so a
            // rank waiting for a slower one leaves the cores to it.
            polls += 1;
            if polls < 2_000 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    });
    sum
}
