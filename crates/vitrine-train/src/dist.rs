//! Data-parallel training: one worker per device, gradients averaged every step.
//!
//! Every worker computes the loss of its own equal share of each global batch ([`Shard`]);
//! the gradients of all workers are averaged with one all-reduce per step (flattened into a
//! single vector, so a step costs one collective round, not one per parameter), and every
//! worker applies the same update. Two transports carry the all-reduce ([`Transport`]):
//! Burn's local collective for several devices of one process, and MPI (cargo feature
//! `mpi`) for one process per rank started by `mpirun` or `srun`, on one machine or many.
//! Neither has a deadline of its own: a local call runs on a helper thread and is given up
//! after [`Cluster::timeout`]; an MPI call is polled until then. A worker that died or hangs
//! becomes a clear error on the others instead of a hang.

use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use burn::module::{AutodiffModule, Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use burn_collective::{CollectiveConfig, CollectiveError, PeerId, ReduceOperation};

use crate::error::{Result, TrainError};

#[cfg(feature = "mpi")]
mod mpi;

/// Seeds the backend and holds a process-wide lock until [`Seeded::finish`]. Burn's seeded
/// RNG is shared by the process, so local workers (threads) that seed and initialise at once
/// would interleave their draws; under this lock each gets the single-worker sequence.
pub fn seed_guard<B: Backend>(device: &B::Device, seed: u64) -> Seeded {
    static SEEDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let guard = SEEDING.lock().unwrap_or_else(|e| e.into_inner());
    B::seed(device, seed);
    Seeded(guard)
}

/// The seeding lock of [`seed_guard`].
pub struct Seeded(std::sync::MutexGuard<'static, ()>);

impl Seeded {
    /// Draws every parameter of `module` and then releases the lock. Burn initialises a
    /// parameter on its first access, not in `init`: without this the draws would happen
    /// later, outside the lock, interleaved with the other local workers'.
    pub fn finish<B: Backend, M: Module<B>>(self, module: M) -> M {
        module.visit(&mut Materialise);
        drop(self.0);
        module
    }
}

struct Materialise;

impl<B: Backend> ModuleVisitor<B> for Materialise {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        // `val` runs a lazy parameter's initialiser once and keeps the tensor.
        let _ = param.val();
    }
}

/// How this process takes part in a job, and how long it waits for the others.
#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    /// Set when an MPI launcher started this process as one rank of several
    /// ([`MpiLaunch::from_env`]); None: one process, its local devices the workers.
    pub mpi: Option<MpiLaunch>,
    /// Longest wait for the other workers at any collective call (start-up included).
    pub timeout: Duration,
}

impl Default for Cluster {
    fn default() -> Self {
        Self {
            mpi: None,
            timeout: Duration::from_secs(DEFAULT_TIMEOUT_SECS),
        }
    }
}

/// What the launcher (`mpirun`, `mpiexec`, `srun`) told this process in its environment.
/// MPI itself says the rank and world size once it is initialised; these are known before,
/// so that the device can be chosen and a binary built without MPI can refuse at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MpiLaunch {
    /// The environment variable that gave the launch away (named in errors).
    pub source: &'static str,
    /// Ranks in the job, when the launcher says (PMIx alone does not).
    pub size: Option<usize>,
    /// This process's rank in the job (0 when the launcher does not say).
    pub rank: usize,
    /// This process's rank among those on its machine: the index of its GPU.
    pub local_rank: usize,
}

impl MpiLaunch {
    /// The launch as the process environment describes it: Open MPI's `mpirun`, MPICH's
    /// Hydra `mpiexec`, Slurm's `srun`, or any PMIx launcher. None when no launcher started
    /// this process or it started one rank only.
    pub fn from_env() -> Option<MpiLaunch> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// [`MpiLaunch::from_env`] over any variable lookup (tests).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Option<MpiLaunch> {
        let num = |k: &str| var(k).and_then(|v| v.trim().parse::<usize>().ok());
        // (size, rank, local rank) variables of each launcher, most specific first.
        const LAUNCHERS: [(&str, &str, &str); 3] = [
            (
                "OMPI_COMM_WORLD_SIZE",
                "OMPI_COMM_WORLD_RANK",
                "OMPI_COMM_WORLD_LOCAL_RANK",
            ),
            ("PMI_SIZE", "PMI_RANK", "MPI_LOCALRANKID"),
            ("SLURM_STEP_NUM_TASKS", "SLURM_PROCID", "SLURM_LOCALID"),
        ];
        for (size, rank, local) in LAUNCHERS {
            if let Some(n) = num(size) {
                return (n > 1).then(|| MpiLaunch {
                    source: size,
                    size: Some(n),
                    rank: num(rank).unwrap_or(0),
                    local_rank: num(local).unwrap_or(0),
                });
            }
        }
        num("PMIX_RANK").map(|rank| MpiLaunch {
            source: "PMIX_RANK",
            size: None,
            rank,
            local_rank: num("PMIX_LOCAL_RANK").unwrap_or(0),
        })
    }

    /// Rank 0 prints the job's summary; the others stay quiet.
    pub fn is_chief(&self) -> bool {
        self.rank == 0
    }

    /// This rank's GPU among those the process sees, given `CUDA_VISIBLE_DEVICES`: its
    /// local rank when it sees them all, modulo the visible count when the launcher gave
    /// each rank its own (`srun --gpus-per-task 1` leaves one: index 0).
    pub fn gpu_index(&self, visible_devices: Option<&str>) -> usize {
        let visible = visible_devices
            .map(|v| v.split(',').filter(|d| !d.trim().is_empty()).count())
            .filter(|&n| n > 0);
        match visible {
            Some(n) => self.local_rank % n,
            None => self.local_rank,
        }
    }
}

/// Default for [`Cluster::timeout`]: covers rank 0's validation and checkpoint between steps.
pub const DEFAULT_TIMEOUT_SECS: u64 = 600;
/// Most workers one job may have (bounds the start-up check's vector, k floats per worker).
pub const MAX_WORKERS: usize = 1024;

/// What carries a job's all-reduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Burn's local collective: the workers are threads of one process, one per device.
    Local,
    /// MPI: the workers are processes (ranks), one device each.
    Mpi,
}

/// One worker's place: global rank among `world` workers.
#[derive(Debug, Clone, PartialEq)]
pub struct Peer {
    pub rank: usize,
    pub world: usize,
    pub timeout: Duration,
    pub transport: Transport,
}

impl Peer {
    /// Rank 0 writes checkpoints, metrics and the final model; the others only compute.
    pub fn is_chief(&self) -> bool {
        self.rank == 0
    }

    pub fn shard(&self) -> Shard {
        Shard {
            index: self.rank,
            count: self.world,
        }
    }
}

/// An equal, contiguous share of a global batch. Batches are a pure function of (epoch,
/// batch index) and the seed, so the shards of one step are disjoint and together are
/// exactly the batch a single worker would take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// The whole batch (single-worker training).
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    /// This shard's part of `items`; `items.len()` must be a multiple of `count`
    /// ([`check_batch_size`] makes it so for every task's batches).
    pub fn of<'a, T>(&self, items: &'a [T]) -> &'a [T] {
        &items[self.range(items.len())]
    }

    /// Index range of this shard in a batch of `len` items (empty for a malformed shard).
    pub fn range(&self, len: usize) -> std::ops::Range<usize> {
        debug_assert!(self.count > 0 && self.index < self.count && len.is_multiple_of(self.count));
        if self.count == 0 || self.index >= self.count {
            return 0..0;
        }
        let n = len / self.count;
        self.index * n..(self.index + 1) * n
    }
}

/// The global batch must split into equal shares, or the mean of the workers' gradients
/// would not be the gradient of the batch.
pub fn check_batch_size(batch_size: usize, world: usize) -> Result<()> {
    if world > 1 && !batch_size.is_multiple_of(world) {
        return Err(TrainError::invalid(format!(
            "train.batch_size = {batch_size} does not split into {world} equal shares: the batch is the global batch across all workers, so it must be a multiple of the number of workers"
        )));
    }
    Ok(())
}

impl Cluster {
    /// Checks the job's shape before any worker starts.
    pub fn validate(&self, local_devices: usize) -> Result<()> {
        let bad = |m: String| Err(TrainError::invalid(m));
        if local_devices == 0 {
            return bad("--devices lists no device".into());
        }
        if local_devices > MAX_WORKERS {
            return bad(format!(
                "{local_devices} devices (allowed up to {MAX_WORKERS} workers)"
            ));
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(86_400) {
            return bad(format!(
                "--collective-timeout-secs = {} (allowed 1..=86400)",
                self.timeout.as_secs()
            ));
        }
        if let Some(m) = &self.mpi {
            if !cfg!(feature = "mpi") {
                return bad(format!(
                    "this process was started by an MPI launcher ({} is set) but this vitrine was built without MPI: build it with `cargo build --release --features mpi` (docs/distributed.md)",
                    m.source
                ));
            }
            if local_devices > 1 {
                return bad(
                    "under MPI each rank trains on one device: start one rank per device and give --device (cuda picks the rank's local GPU), not --devices".into(),
                );
            }
            if let Some(n) = m.size.filter(|&n| n > MAX_WORKERS) {
                return bad(format!("{n} MPI ranks (allowed up to {MAX_WORKERS})"));
            }
        }
        Ok(())
    }
}

/// Runs `work` once per worker of this process and returns rank 0's result (on another MPI
/// rank, its own). One device and no MPI launch: a plain call without any collective.
/// Several local devices: one thread each on Burn's local collective; the first error of
/// any worker is returned at once, since the others may be blocked in a collective call
/// that can no longer complete. Under MPI: one worker, this process's rank.
pub fn launch<B, R, F>(devices: Vec<B::Device>, cluster: &Cluster, work: F) -> Result<R>
where
    B: AutodiffBackend,
    R: Send + 'static,
    F: Fn(Option<Peer>, B::Device) -> Result<R> + Send + Sync + 'static,
{
    cluster.validate(devices.len())?;
    if cluster.mpi.is_some() {
        let device = devices.into_iter().next().expect("validated: one device");
        #[cfg(feature = "mpi")]
        return mpi::launch::<B, R, F>(device, cluster.timeout, work);
        #[cfg(not(feature = "mpi"))]
        unreachable!("validate refuses an MPI launch without the mpi feature: {device:?}");
    }
    if devices.len() == 1 {
        let device = devices.into_iter().next().expect("one device");
        return work(None, device);
    }
    let world = devices.len();
    let config = CollectiveConfig::default().with_num_devices(world);
    let work = Arc::new(work);
    let (tx, rx) = mpsc::channel();
    for (i, device) in devices.into_iter().enumerate() {
        let peer = Peer {
            rank: i,
            world,
            timeout: cluster.timeout,
            transport: Transport::Local,
        };
        let (work, tx, config) = (work.clone(), tx.clone(), config.clone());
        std::thread::Builder::new()
            .name(format!("worker-{}", peer.rank))
            .spawn(move || {
                // A panicking worker still reports, so the others need not wait for it.
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    run_peer::<B, R, F>(&peer, device, config, &*work)
                }))
                .unwrap_or_else(|p| {
                    let why = p
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| p.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    Err(TrainError::Collective(format!(
                        "worker {} panicked: {why}",
                        peer.rank
                    )))
                });
                let _ = tx.send((i, result));
            })
            .map_err(|e| TrainError::invalid(format!("cannot start a worker thread: {e}")))?;
    }
    drop(tx);
    let mut first = None;
    for _ in 0..world {
        match rx.recv() {
            Ok((_, Err(e))) => return Err(e),
            Ok((0, Ok(r))) => first = Some(r),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    first.ok_or_else(|| TrainError::Collective("a worker thread stopped without a result".into()))
}

fn run_peer<B, R, F>(
    peer: &Peer,
    device: B::Device,
    config: CollectiveConfig,
    work: &F,
) -> Result<R>
where
    B: AutodiffBackend,
    F: Fn(Option<Peer>, B::Device) -> Result<R>,
{
    let id = PeerId(peer.rank as u32);
    let d = device.clone();
    // Registration waits for every local worker.
    bounded(
        peer,
        "start-up (registering with the other workers)",
        move || burn_collective::register::<B::InnerBackend>(id, d, config),
    )?;
    let result = work(Some(peer.clone()), device)?;
    bounded(peer, "shut-down", move || {
        burn_collective::finish_collective::<B::InnerBackend>(id)
    })?;
    Ok(result)
}

/// Runs one blocking local collective call on a helper thread and waits at most the peer's
/// timeout for it. On timeout the helper stays blocked; the caller returns the error and
/// the process ends with it.
fn bounded<T: Send + 'static>(
    peer: &Peer,
    what: &str,
    call: impl FnOnce() -> std::result::Result<T, CollectiveError> + Send + 'static,
) -> Result<T> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("collective".into())
        .spawn(move || {
            let _ = tx.send(call());
        })
        .map_err(|e| TrainError::Collective(format!("cannot start a collective call: {e}")))?;
    match rx.recv_timeout(peer.timeout) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(TrainError::Collective(format!(
            "worker {} of {}: {what} failed in Burn's collective engine: {e:?}",
            peer.rank, peer.world
        ))),
        Err(mpsc::RecvTimeoutError::Timeout) => Err(TrainError::Collective(no_answer(peer, what))),
        Err(mpsc::RecvTimeoutError::Disconnected) => Err(TrainError::Collective(format!(
            "worker {} of {}: the collective engine failed during {what}",
            peer.rank, peer.world
        ))),
    }
}

/// The error of a collective call that timed out, the same for both transports.
fn no_answer(peer: &Peer, what: &str) -> String {
    format!(
        "worker {} of {}: no answer from the other workers within {} s during {what}: a worker stopped, hangs or cannot be reached (--collective-timeout-secs sets the wait)",
        peer.rank,
        peer.world,
        peer.timeout.as_secs_f64()
    )
}

/// The sum of `x` over all workers, on every worker.
fn all_reduce<B: Backend>(peer: &Peer, what: &str, x: Tensor<B, 1>) -> Result<Tensor<B, 1>> {
    match peer.transport {
        Transport::Local => {
            let id = PeerId(peer.rank as u32);
            let primitive = x.into_primitive().tensor();
            let out = bounded(peer, what, move || {
                burn_collective::all_reduce::<B>(id, primitive, ReduceOperation::Sum)
            })?;
            Ok(Tensor::from_primitive(TensorPrimitive::Float(out)))
        }
        Transport::Mpi => mpi_all_reduce(peer, what, x),
    }
}

#[cfg(feature = "mpi")]
fn mpi_all_reduce<B: Backend>(peer: &Peer, what: &str, x: Tensor<B, 1>) -> Result<Tensor<B, 1>> {
    let device = x.device();
    let values: Vec<f32> = x.into_data().iter::<f32>().collect();
    let n = values.len();
    let sum = mpi::all_reduce_sum(peer, what, &values);
    Ok(Tensor::from_data(TensorData::new(sum, [n]), &device))
}

#[cfg(not(feature = "mpi"))]
fn mpi_all_reduce<B: Backend>(_: &Peer, what: &str, _: Tensor<B, 1>) -> Result<Tensor<B, 1>> {
    unreachable!("an MPI peer exists only with the mpi feature ({what})")
}

/// Every float tensor of a module (parameters and running statistics), flattened in the
/// module's own order, which is the same on every worker.
struct Flatten<B: Backend> {
    parts: Vec<Tensor<B, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Flatten<B::InnerBackend> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let n = param.shape().num_elements();
        self.parts.push(param.val().inner().reshape([n]));
    }
}

fn flatten<B: AutodiffBackend, M: AutodiffModule<B>>(model: &M) -> Tensor<B::InnerBackend, 1> {
    let mut v = Flatten { parts: Vec::new() };
    model.visit(&mut v);
    Tensor::cat(v.parts, 0)
}

/// Every float tensor of a module, flattened (what `--param-trace` writes).
pub fn flat_values<B: AutodiffBackend, M: AutodiffModule<B>>(model: &M) -> Vec<f32> {
    flatten::<B, M>(model).into_data().iter::<f32>().collect()
}

/// Replaces every float tensor of a module by its slice of `flat` (the [`Flatten`] order).
struct Unflatten<B: Backend> {
    flat: Tensor<B, 1>,
    offset: usize,
}

impl<B: AutodiffBackend> ModuleMapper<B> for Unflatten<B::InnerBackend> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, old, mapper) = param.consume();
        let shape = old.shape();
        let n = shape.num_elements();
        let part = self
            .flat
            .clone()
            .slice(self.offset..self.offset + n)
            .reshape(shape);
        self.offset += n;
        let value = Tensor::from_inner(part).set_require_grad(old.is_require_grad());
        Param::from_mapped_value(id, value, mapper)
    }
}

/// What every worker must agree on before the first step: its position and the shape of
/// the job (steps, batches, parameters, loop config). Compared first, so a mismatch is a
/// clear error rather than a shape error or a wait for a worker that already finished.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub step: usize,
    pub total_steps: usize,
    pub batches_per_epoch: usize,
    pub stop_after_epochs: Option<usize>,
    /// Serialised loop config (optimiser, schedule, batch size, epochs).
    pub loop_config: String,
}

/// Before the first step: every worker compares its [`Plan`] and parameter count (and,
/// when resuming, a hash of its parameters) with everyone else's; then, on a fresh start,
/// every worker takes rank 0's initial parameters (a sum in which the others contribute
/// zeros: one primitive, all-reduce, serves both transports).
pub fn start<B: AutodiffBackend, M: AutodiffModule<B>>(
    peer: &Peer,
    model: M,
    resumed: bool,
    plan: &Plan,
) -> Result<M> {
    let flat = flatten::<B, M>(&model);
    let count = flat.dims()[0];
    let params = if resumed {
        hash_f32(&flat.clone().into_data().iter::<f32>().collect::<Vec<_>>())
    } else {
        0
    };
    let plan_hash = hash_bytes(
        format!(
            "{}|{}|{:?}|{}",
            plan.total_steps, plan.batches_per_epoch, plan.stop_after_epochs, plan.loop_config
        )
        .as_bytes(),
    );
    let mine: Vec<f32> = [plan.step as u64, count as u64, plan_hash, params]
        .iter()
        .flat_map(|&v| exact_pieces(v))
        .collect();
    let k = mine.len();
    let mut slots = vec![0f32; k * peer.world];
    slots[peer.rank * k..(peer.rank + 1) * k].copy_from_slice(&mine);
    let device = model.devices().into_iter().next().unwrap_or_default();
    // Every worker's fingerprint with one sum: each writes its own slot, the rest are 0.
    let all = all_reduce(
        peer,
        "start-up (comparing workers)",
        Tensor::<B::InnerBackend, 1>::from_data(TensorData::new(slots, [k * peer.world]), &device),
    )?;
    let all: Vec<f32> = all.into_data().iter::<f32>().collect();
    for (rank, theirs) in all.chunks(k).enumerate() {
        let what = if theirs[..4] != mine[..4] {
            "is at another step"
        } else if theirs[4..8] != mine[4..8] {
            "has a model of another size"
        } else if theirs[8..12] != mine[8..12] {
            "has another number of steps, batches per epoch, --stop-after-epochs or [train] settings (other data or config)"
        } else if theirs[12..] != mine[12..] {
            "resumed other parameters"
        } else {
            continue;
        };
        return Err(TrainError::Collective(format!(
            "worker {rank} {what} than worker {}: every worker must run the same config on the same data and resume from the same checkpoint (one shared --run-dir)",
            peer.rank
        )));
    }
    if resumed {
        return Ok(model);
    }
    let mine = if peer.is_chief() {
        flat
    } else {
        flat.zeros_like()
    };
    let flat = all_reduce(peer, "start-up (parameters from rank 0)", mine)?;
    Ok(model.map(&mut Unflatten { flat, offset: 0 }))
}

fn hash_bytes(bytes: &[u8]) -> u64 {
    // FNV-1a: stable across processes and machines (std's hasher is seeded per process).
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

fn hash_f32(values: &[f32]) -> u64 {
    let bytes: Vec<u8> = values
        .iter()
        .flat_map(|v| v.to_bits().to_le_bytes())
        .collect();
    hash_bytes(&bytes)
}

/// A u64 as four 16-bit pieces: f32 holds each exactly, so a sum with zeros returns it.
fn exact_pieces(v: u64) -> [f32; 4] {
    [0, 16, 32, 48].map(|s| ((v >> s) & 0xFFFF) as f32)
}

/// What one step's all-reduce returns.
pub struct Reduced {
    pub grads: GradientsParams,
    /// Mean loss over the whole global batch (weighted by examples).
    pub loss: f32,
    /// Examples in the whole global batch.
    pub examples: usize,
}

/// Takes a module's gradients out of `grads` in module order; a parameter without one
/// contributes zeros and a 0 presence flag.
struct GatherGrads<'a, B: Backend> {
    grads: &'a mut GradientsParams,
    parts: Vec<Tensor<B, 1>>,
    present: Vec<f32>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for GatherGrads<'_, B::InnerBackend> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let n = param.shape().num_elements();
        match self.grads.remove::<B::InnerBackend, D>(param.id) {
            Some(g) => {
                self.parts.push(g.reshape([n]));
                self.present.push(1.0);
            }
            None => {
                let device = param.val().inner().device();
                self.parts.push(Tensor::zeros([n], &device));
                self.present.push(0.0);
            }
        }
    }
}

/// Puts the averaged gradients back, for every parameter some worker had one for.
struct ScatterGrads<B: Backend> {
    flat: Tensor<B, 1>,
    present: Vec<f32>,
    offset: usize,
    index: usize,
    grads: GradientsParams,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for ScatterGrads<B::InnerBackend> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let shape = param.shape();
        let n = shape.num_elements();
        if self.present[self.index] > 0.0 {
            let g = self
                .flat
                .clone()
                .slice(self.offset..self.offset + n)
                .reshape(shape);
            self.grads.register::<B::InnerBackend, D>(param.id, g);
        }
        self.offset += n;
        self.index += 1;
    }
}

/// One all-reduce per step: every worker's gradients weighted by the examples (or tokens)
/// its loss averages over, summed and divided by the whole batch's count, so shards of
/// unequal size still give the gradient of the whole batch's mean; the batch's loss and size
/// ride in the same vector.
pub fn reduce_step<B: AutodiffBackend, M: AutodiffModule<B>>(
    peer: &Peer,
    model: &M,
    mut grads: GradientsParams,
    loss: f32,
    examples: usize,
    step: usize,
) -> Result<Reduced> {
    let mut gather = GatherGrads::<B::InnerBackend> {
        grads: &mut grads,
        parts: Vec::new(),
        present: Vec::new(),
    };
    model.visit(&mut gather);
    let GatherGrads { parts, present, .. } = gather;
    let device = model.devices().into_iter().next().unwrap_or_default();
    let params = present.len();
    let weight = examples as f32;
    let mut tail = present;
    tail.extend([loss * weight, weight]);
    let tail_len = tail.len();
    let grads_flat = Tensor::cat(parts, 0).mul_scalar(weight);
    let flat = Tensor::cat(
        vec![
            grads_flat,
            Tensor::from_data(TensorData::new(tail, [tail_len]), &device),
        ],
        0,
    );
    let total = flat.dims()[0];
    let flat = all_reduce(
        peer,
        &format!("step {} (gradient all-reduce)", step + 1),
        flat,
    )?;
    let tail: Vec<f32> = flat
        .clone()
        .slice(total - tail_len..total)
        .into_data()
        .iter::<f32>()
        .collect();
    let (loss_sum, n) = (tail[params], tail[params + 1]);
    if !n.is_finite() || n <= 0.0 {
        return Err(TrainError::invalid(format!(
            "step {}: the batch holds no examples or tokens on any worker",
            step + 1
        )));
    }
    let mut scatter = ScatterGrads::<B::InnerBackend> {
        flat: flat.div_scalar(n),
        present: tail[..params].to_vec(),
        offset: 0,
        index: 0,
        grads: GradientsParams::new(),
    };
    model.visit(&mut scatter);
    Ok(Reduced {
        grads: scatter.grads,
        loss: loss_sum / n,
        examples: n.round() as usize,
    })
}

/// `--param-trace PATH`: each worker appends `{"step", "rank", "values"}` per step to
/// PATH (single worker) or PATH.rankN (several), for reproducibility checks.
pub fn trace_path(base: &std::path::Path, peer: Option<&Peer>) -> PathBuf {
    match peer {
        Some(p) => {
            let mut s = base.as_os_str().to_owned();
            s.push(format!(".rank{}", p.rank));
            PathBuf::from(s)
        }
        None => base.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_equal_disjoint_and_cover_the_batch() {
        let batch: Vec<usize> = (10..22).collect();
        let mut seen = Vec::new();
        for index in 0..3 {
            let part = Shard { index, count: 3 }.of(&batch);
            assert_eq!(part.len(), 4);
            assert_eq!(
                Shard { index, count: 3 }.range(12),
                index * 4..index * 4 + 4
            );
            seen.extend_from_slice(part);
        }
        assert_eq!(seen, batch);
        assert_eq!(Shard::WHOLE.of(&batch), &batch[..]);
        assert!(check_batch_size(12, 3).is_ok());
        assert!(check_batch_size(12, 1).is_ok());
        let e = check_batch_size(12, 5).unwrap_err().to_string();
        assert!(
            e.contains("train.batch_size = 12") && e.contains("5 equal shares"),
            "{e}"
        );
    }

    #[test]
    fn cluster_limits_are_checked() {
        let ok = Cluster::default();
        assert!(ok.validate(1).is_ok());
        assert!(ok.validate(2).is_ok());
        let e = |c: &Cluster, devices: usize| c.validate(devices).unwrap_err().to_string();
        assert!(e(&ok, 0).contains("no device"));
        // Workers: at the limit and one past it.
        assert!(ok.validate(MAX_WORKERS).is_ok());
        assert!(e(&ok, MAX_WORKERS + 1).contains("1025 devices (allowed up to 1024"));
        // The timeout: at its limits and just past them.
        let t = |s: u64| Cluster {
            timeout: Duration::from_secs(s),
            ..Cluster::default()
        };
        assert!(t(1).validate(1).is_ok());
        assert!(t(86_400).validate(1).is_ok());
        assert!(e(&t(0), 1).contains("--collective-timeout-secs = 0"));
        assert!(e(&t(86_401), 1).contains("--collective-timeout-secs = 86401"));
    }

    #[test]
    fn an_mpi_launch_gets_one_device_per_rank() {
        let launch = |size: Option<usize>| Cluster {
            mpi: Some(MpiLaunch {
                source: "OMPI_COMM_WORLD_SIZE",
                size,
                rank: 1,
                local_rank: 1,
            }),
            ..Cluster::default()
        };
        let two = launch(Some(2));
        let e = |c: &Cluster, devices: usize| c.validate(devices).unwrap_err().to_string();
        if cfg!(feature = "mpi") {
            assert!(two.validate(1).is_ok());
            assert!(e(&two, 2).contains("one device"));
            assert!(launch(Some(MAX_WORKERS)).validate(1).is_ok());
            assert!(e(&launch(Some(MAX_WORKERS + 1)), 1).contains("1025 MPI ranks"));
        } else {
            let msg = e(&two, 1);
            assert!(
                msg.contains("OMPI_COMM_WORLD_SIZE is set") && msg.contains("--features mpi"),
                "{msg}"
            );
        }
    }

    #[test]
    fn launchers_are_recognised_from_their_environment() {
        let from = |vars: &[(&str, &str)]| {
            let vars: Vec<(String, String)> = vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            MpiLaunch::from_vars(|k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
        };
        assert_eq!(from(&[]), None);
        assert_eq!(
            from(&[
                ("OMPI_COMM_WORLD_SIZE", "4"),
                ("OMPI_COMM_WORLD_RANK", "3"),
                ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
            ]),
            Some(MpiLaunch {
                source: "OMPI_COMM_WORLD_SIZE",
                size: Some(4),
                rank: 3,
                local_rank: 1,
            })
        );
        // One rank is no distributed job: trained like a plain process.
        assert_eq!(from(&[("OMPI_COMM_WORLD_SIZE", "1")]), None);
        assert_eq!(
            from(&[("SLURM_STEP_NUM_TASKS", "1"), ("SLURM_PROCID", "0")]),
            None
        );
        let slurm = from(&[
            ("SLURM_STEP_NUM_TASKS", "8"),
            ("SLURM_PROCID", "5"),
            ("SLURM_LOCALID", "1"),
        ])
        .unwrap();
        assert_eq!((slurm.size, slurm.rank, slurm.local_rank), (Some(8), 5, 1));
        assert!(!slurm.is_chief());
        let hydra = from(&[("PMI_SIZE", "2"), ("PMI_RANK", "0")]).unwrap();
        assert_eq!(
            (hydra.source, hydra.rank, hydra.local_rank),
            ("PMI_SIZE", 0, 0)
        );
        assert!(hydra.is_chief());
        let pmix = from(&[("PMIX_RANK", "2"), ("PMIX_LOCAL_RANK", "0")]).unwrap();
        assert_eq!((pmix.size, pmix.rank), (None, 2));
        // The rank's GPU: its local rank among all GPUs, or its one GPU.
        assert_eq!(slurm.gpu_index(None), 1);
        assert_eq!(slurm.gpu_index(Some("0,1,2,3")), 1);
        assert_eq!(slurm.gpu_index(Some("2")), 0);
        assert_eq!(slurm.gpu_index(Some("")), 1);
    }

    #[test]
    fn fingerprints_tell_values_apart_and_survive_f32() {
        let a = hash_f32(&[1.0, 2.0, 3.0]);
        assert_eq!(a, hash_f32(&[1.0, 2.0, 3.0]));
        assert_ne!(a, hash_f32(&[1.0, 2.0, 3.000001]));
        assert_ne!(hash_bytes(b"epochs=2"), hash_bytes(b"epochs=3"));
        // Every piece is an integer below 2^16, so f32 holds it exactly and a sum of one
        // slot with zeros gives it back unchanged; the pieces rebuild the u64.
        for v in [0, 1, u64::MAX, a, 123_456_789_012] {
            let p = exact_pieces(v);
            assert!(p.iter().all(|x| x.fract() == 0.0 && *x < 65_536.0));
            let back = p
                .iter()
                .enumerate()
                .fold(0u64, |acc, (i, x)| acc | ((*x as u64) << (16 * i)));
            assert_eq!(back, v);
        }
    }
}
