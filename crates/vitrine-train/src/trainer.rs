//! The training loop every task shares: AdamW, warm-up + cosine schedule, gradient
//! clipping, progress, `metrics.jsonl`, atomic checkpoints and exact resume.
//!
//! A task supplies batches as a pure function of (epoch, batch index), so resuming from
//! a checkpoint replays exactly the batches an uninterrupted run would have seen, and
//! data-parallel workers ([`crate::dist`]) each take their own share of the same batch.
//! [`fit`] reads as its phases: [`Loop::start`], [`Loop::step`], [`Loop::end_epoch`]
//! (evaluate, report, checkpoint) and [`Loop::finish`].

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Instant;

use burn::grad_clipping::GradientClippingConfig;
use burn::module::AutodiffModule;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamW, AdamWConfig, GradientsParams, Optimizer};
use burn::record::Recorder;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use vitrine_infer::config::LoopConfig;
use vitrine_infer::run::{load_module_bytes, module_to_bytes, Rec, RunDir};

use crate::checkpoint::{Checkpoint, TrainState};
use crate::dist::{self, Peer, Shard};
use crate::error::{io_err, Result, TrainError};

/// Which batch a step trains on: batch `batch` of `epoch`, this worker's `shard` of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchAt {
    pub epoch: usize,
    pub batch: usize,
    pub shard: Shard,
}

pub trait Task<B: AutodiffBackend, M> {
    fn batches_per_epoch(&self) -> usize;
    /// Forward pass and loss of the batch `at` names: (scalar loss, examples in it). The
    /// shards of one batch are disjoint and together are the whole batch.
    fn loss(&mut self, model: &M, at: BatchAt) -> Result<(Tensor<B, 1>, usize)>;
    /// What `loss` counts (progress and metrics say "<unit>/s").
    fn unit(&self) -> &'static str {
        "examples"
    }
    /// Extra metrics after each epoch (e.g. validation loss), merged into `metrics.jsonl`.
    /// In data-parallel training only rank 0 calls it.
    fn epoch_end(&mut self, _model: &M, _epoch: usize) -> Result<serde_json::Value> {
        Ok(serde_json::Value::Null)
    }
}

#[derive(Debug, Clone, Default)]
pub struct FitOptions {
    /// Continue from the run's last checkpoint.
    pub resume: bool,
    /// Stop (resumably) once this many epochs are complete, as a time-boxed job would.
    pub stop_after_epochs: Option<usize>,
    /// No progress bar or log lines.
    pub quiet: bool,
    /// This worker's place in data-parallel training (None: the only worker).
    pub peer: Option<Peer>,
    /// Append every parameter after every step to this file (`dist::trace_path`).
    pub param_trace: Option<PathBuf>,
    /// Skip bad catalogue rows and images (counted) instead of failing (image tasks).
    pub skip_bad: bool,
}

impl FitOptions {
    /// Whether this worker writes the run directory (the only one, or rank 0).
    pub fn is_chief(&self) -> bool {
        self.peer.as_ref().is_none_or(Peer::is_chief)
    }

    /// Workers in the job (1 without data parallelism).
    pub fn world(&self) -> usize {
        self.peer.as_ref().map_or(1, |p| p.world)
    }

    /// Progress bars and warnings: only the one worker that reports.
    pub fn quiet(&self) -> bool {
        self.quiet || !self.is_chief()
    }

    /// What every trainer checks before it writes anything: the global batch splits over the
    /// workers, and a fresh run's directory holds no run yet (rank 0 owns the directory).
    pub fn check_start(&self, run: &RunDir, batch_size: usize, fresh: bool) -> Result<()> {
        dist::check_batch_size(batch_size, self.world())?;
        if fresh && self.is_chief() && run.config_path().exists() {
            return Err(run
                .error("already holds a run: pass --resume to continue it, or choose another --run-dir")
                .into());
        }
        Ok(())
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct FitSummary {
    pub steps: usize,
    pub epochs_completed: usize,
    pub last_epoch_loss: f64,
    pub wall_secs: f64,
    pub examples_per_sec: f64,
    /// Stopped by `stop_after_epochs` before the configured number of epochs.
    pub stopped_early: bool,
}

/// The optimiser every run uses: AdamW with the config's betas, epsilon, weight decay and clipping.
pub fn optimizer<B: AutodiffBackend, M: AutodiffModule<B>>(
    cfg: &LoopConfig,
) -> OptimizerAdaptor<AdamW, M, B> {
    AdamWConfig::new()
        .with_beta_1(cfg.beta_1 as f32)
        .with_beta_2(cfg.beta_2 as f32)
        .with_epsilon(cfg.epsilon as f32)
        .with_weight_decay(cfg.weight_decay as f32)
        .with_grad_clipping(
            (cfg.grad_clip > 0.0).then_some(GradientClippingConfig::Norm(cfg.grad_clip as f32)),
        )
        .init::<B, M>()
}

/// Trains `model` on `task` for `cfg.epochs` (from the run's checkpoint with
/// `opts.resume`), checkpointing into `run`.
pub fn fit<B, M, T>(
    model: M,
    task: &mut T,
    cfg: &LoopConfig,
    run: &RunDir,
    opts: &FitOptions,
    device: &B::Device,
) -> Result<(M, FitSummary)>
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
    T: Task<B, M>,
{
    let (mut lp, mut model) = Loop::start(model, task, cfg, run, opts, device)?;
    while lp.state.epoch < cfg.epochs {
        lp.begin_epoch();
        while lp.state.batch_in_epoch < lp.per_epoch {
            model = lp.step(task, model)?;
        }
        lp.end_epoch(task, &model)?;
        if opts.stop_after_epochs.is_some_and(|n| lp.state.epoch >= n)
            && lp.state.epoch < cfg.epochs
        {
            lp.stopped_early = true;
            break;
        }
    }
    Ok((model, lp.finish()))
}

/// One run of the loop: the optimiser and where training stands (the model goes through
/// each phase by value, so the optimiser can update its tensors in place).
struct Loop<'a, B: AutodiffBackend, M: AutodiffModule<B>> {
    optim: OptimizerAdaptor<AdamW, M, B>,
    state: TrainState,
    cfg: &'a LoopConfig,
    run: &'a RunDir,
    opts: &'a FitOptions,
    per_epoch: usize,
    shard: Shard,
    progress: Progress,
    trace: Option<(PathBuf, std::io::BufWriter<std::fs::File>)>,
    started: Instant,
    examples_total: usize,
    /// Examples and start of the epoch in progress, as this process saw it.
    epoch_examples_now: usize,
    epoch_started: Instant,
    last_epoch_loss: f64,
    stopped_early: bool,
}

impl<'a, B: AutodiffBackend, M: AutodiffModule<B>> Loop<'a, B, M> {
    /// Sets up the optimiser, resumes from the run's checkpoint, and (data-parallel) agrees
    /// with the other workers on where to start.
    fn start<T: Task<B, M>>(
        mut model: M,
        task: &T,
        cfg: &'a LoopConfig,
        run: &'a RunDir,
        opts: &'a FitOptions,
        device: &B::Device,
    ) -> Result<(Self, M)> {
        let per_epoch = task.batches_per_epoch();
        if per_epoch == 0 {
            return Err(TrainError::invalid(format!(
                "no full batch of {} {} in an epoch: use a smaller train.batch_size or more data",
                cfg.batch_size,
                task.unit()
            )));
        }
        dist::check_batch_size(cfg.batch_size, opts.world())?;
        let total_steps = per_epoch * cfg.epochs;
        let mut optim = optimizer::<B, M>(cfg);
        let mut state = TrainState {
            step: 0,
            epoch: 0,
            batch_in_epoch: 0,
            total_steps,
            epoch_loss_sum: 0.0,
            epoch_examples: 0,
        };
        if opts.resume {
            (model, optim, state) = resume(model, optim, total_steps, run, opts, device)?;
        }
        if let Some(peer) = &opts.peer {
            let plan = dist::Plan {
                step: state.step,
                total_steps,
                batches_per_epoch: per_epoch,
                stop_after_epochs: opts.stop_after_epochs,
                loop_config: serde_json::to_string(cfg).unwrap_or_default(),
            };
            model = dist::start::<B, M>(peer, model, opts.resume, &plan)?;
        }
        let trace = match &opts.param_trace {
            Some(base) => {
                let path = dist::trace_path(base, opts.peer.as_ref());
                let file = std::fs::File::create(&path).map_err(io_err(&path))?;
                Some((path, std::io::BufWriter::new(file)))
            }
            None => None,
        };
        // Workers other than rank 0 stay silent: rank 0 reports the global batch's figures.
        let progress = Progress::new(task.unit(), total_steps, state.step, opts.quiet());
        let lp = Self {
            optim,
            state,
            cfg,
            run,
            opts,
            per_epoch,
            shard: opts.peer.as_ref().map_or(Shard::WHOLE, Peer::shard),
            progress,
            trace,
            started: Instant::now(),
            examples_total: 0,
            epoch_examples_now: 0,
            epoch_started: Instant::now(),
            last_epoch_loss: f64::NAN,
            stopped_early: false,
        };
        Ok((lp, model))
    }

    fn begin_epoch(&mut self) {
        self.progress.bar.set_prefix(format!(
            "epoch {}/{}",
            self.state.epoch + 1,
            self.cfg.epochs
        ));
        self.epoch_started = Instant::now();
        self.epoch_examples_now = 0;
    }

    /// One optimiser step on the next batch (all-reduced across workers).
    fn step<T: Task<B, M>>(&mut self, task: &mut T, model: M) -> Result<M> {
        let state = &mut self.state;
        let lr = self.cfg.schedule.at(state.step, state.total_steps);
        let at = BatchAt {
            epoch: state.epoch,
            batch: state.batch_in_epoch,
            shard: self.shard,
        };
        let (loss, examples) = task.loss(&model, at)?;
        let shard_loss: f32 = loss
            .clone()
            .into_data()
            .iter::<f32>()
            .next()
            .unwrap_or(f32::NAN);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        // Every worker sees the global loss, so all of them stop together on a NaN.
        let (grads, loss, examples) = match &self.opts.peer {
            Some(peer) => {
                let r = dist::reduce_step::<B, M>(
                    peer, &model, grads, shard_loss, examples, state.step,
                )?;
                (r.grads, r.loss, r.examples)
            }
            None => (grads, shard_loss, examples),
        };
        if !loss.is_finite() {
            return Err(TrainError::Diverged {
                step: state.step,
                loss,
            });
        }
        let model = self.optim.step(lr, model, grads);
        state.step += 1;
        state.batch_in_epoch += 1;
        state.epoch_loss_sum += loss as f64 * examples as f64;
        state.epoch_examples += examples;
        self.epoch_examples_now += examples;
        self.examples_total += examples;
        let rate =
            self.epoch_examples_now as f64 / self.epoch_started.elapsed().as_secs_f64().max(1e-9);
        self.progress.step(state, self.cfg, loss, rate, lr);
        if let Some((path, out)) = &mut self.trace {
            let line = json!({
                "step": state.step,
                "rank": self.opts.peer.as_ref().map_or(0, |p| p.rank),
                "shard_loss": shard_loss,
                "loss": loss,
                "values": dist::flat_values::<B, M>(&model),
            });
            writeln!(out, "{line}")
                .and_then(|_| out.flush())
                .map_err(io_err(path))?;
        }
        let every = self.cfg.checkpoint_every_steps;
        if every > 0 && state.step.is_multiple_of(every) && state.batch_in_epoch < self.per_epoch {
            self.checkpoint(&model)?;
        }
        Ok(model)
    }

    /// Evaluates (rank 0), appends the epoch's line to `metrics.jsonl`, reports it and
    /// checkpoints.
    fn end_epoch<T: Task<B, M>>(&mut self, task: &mut T, model: &M) -> Result<()> {
        let chief = self.opts.is_chief();
        let state = &self.state;
        let epoch_secs = self.epoch_started.elapsed().as_secs_f64();
        let rate = self.epoch_examples_now as f64 / epoch_secs.max(1e-9);
        self.last_epoch_loss = state.epoch_loss_sum / state.epoch_examples.max(1) as f64;
        let extra = if chief {
            task.epoch_end(model, state.epoch)?
        } else {
            serde_json::Value::Null
        };
        let mut line = json!({
            "epoch": state.epoch + 1,
            "step": state.step,
            "loss": self.last_epoch_loss,
            "lr": self.cfg.schedule.at(state.step.saturating_sub(1), state.total_steps),
            "epoch_secs": epoch_secs,
        });
        let mut extra_text = String::new();
        if let Some(map) = line.as_object_mut() {
            map.insert(format!("{}_per_sec", self.progress.unit), json!(rate));
            for (k, v) in extra.as_object().into_iter().flatten() {
                map.insert(k.clone(), v.clone());
                if let Some(f) = v.as_f64().filter(|f| f.fract() != 0.0) {
                    extra_text.push_str(&format!(", {k} {f:.4}"));
                }
            }
        }
        if chief {
            self.run.append_metrics(&line)?;
        }
        self.progress.epoch(
            state.epoch,
            self.cfg.epochs,
            self.last_epoch_loss,
            &extra_text,
            rate,
            epoch_secs,
        );
        let state = &mut self.state;
        state.epoch += 1;
        state.batch_in_epoch = 0;
        state.epoch_loss_sum = 0.0;
        state.epoch_examples = 0;
        self.checkpoint(model)
    }

    /// Rank 0 writes model, optimiser and loop state atomically; the others skip it.
    fn checkpoint(&self, model: &M) -> Result<()> {
        if !self.opts.is_chief() {
            return Ok(());
        }
        Checkpoint {
            state: self.state.clone(),
            module: module_to_bytes(model.clone()),
            optimizer: Rec::default()
                .record(self.optim.to_record(), ())
                .expect("optimiser state serialises"),
        }
        .save(&self.run.checkpoint_path())
    }

    fn finish(self) -> FitSummary {
        self.progress.bar.finish_and_clear();
        let wall_secs = self.started.elapsed().as_secs_f64();
        FitSummary {
            steps: self.state.step,
            epochs_completed: self.state.epoch,
            last_epoch_loss: self.last_epoch_loss,
            wall_secs,
            examples_per_sec: self.examples_total as f64 / wall_secs.max(1e-9),
            stopped_early: self.stopped_early,
        }
    }
}

/// Model, optimiser and loop state from the run's checkpoint, which must belong to a run of
/// `total_steps`; rank 0 drops the metrics lines of the work that was lost.
#[allow(clippy::type_complexity)]
fn resume<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: M,
    optim: OptimizerAdaptor<AdamW, M, B>,
    total_steps: usize,
    run: &RunDir,
    opts: &FitOptions,
    device: &B::Device,
) -> Result<(M, OptimizerAdaptor<AdamW, M, B>, TrainState)> {
    let path = run.checkpoint_path();
    let ckpt = Checkpoint::load(&path)?;
    if ckpt.state.total_steps != total_steps {
        return Err(TrainError::checkpoint(
            &path,
            format!(
                "was written for {} total steps, this config gives {total_steps}: the run's config changed",
                ckpt.state.total_steps
            ),
        ));
    }
    let model = load_module_bytes(model, ckpt.module, &path, device)?;
    let record = Recorder::<B>::load(&Rec::default(), ckpt.optimizer, device)
        .map_err(|e| TrainError::checkpoint(&path, format!("cannot load optimiser state: {e}")))?;
    if opts.is_chief() {
        run.truncate_metrics_after(ckpt.state.step)?;
    }
    Ok((model, optim.load_record(record), ckpt.state))
}

/// What the loop shows: a progress bar on a terminal, log lines otherwise, a line per epoch.
struct Progress {
    bar: ProgressBar,
    unit: &'static str,
    interactive: bool,
    quiet: bool,
}

impl Progress {
    fn new(unit: &'static str, total_steps: usize, step: usize, quiet: bool) -> Self {
        let interactive = !quiet && std::io::stderr().is_terminal();
        let bar = if interactive {
            ProgressBar::new(total_steps as u64)
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} [{bar:30}] {pos}/{len} {msg} [{elapsed_precise}<{eta_precise}]",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
        bar.set_position(step as u64);
        Self {
            bar,
            unit,
            interactive,
            quiet,
        }
    }

    fn short_unit(&self) -> &'static str {
        if self.unit == "tokens" {
            "tok"
        } else {
            "ex"
        }
    }

    fn step(&self, state: &TrainState, cfg: &LoopConfig, loss: f32, rate: f64, lr: f64) {
        let unit = self.short_unit();
        self.bar
            .set_message(format!("loss {loss:.4} | {rate:.0} {unit}/s | lr {lr:.2e}"));
        self.bar.inc(1);
        let every = cfg.log_every_steps;
        if !self.interactive && !self.quiet && every > 0 && state.step.is_multiple_of(every) {
            eprintln!(
                "epoch {}/{} step {}/{} loss {loss:.4} {rate:.0} {unit}/s lr {lr:.2e}",
                state.epoch + 1,
                cfg.epochs,
                state.step,
                state.total_steps
            );
        }
    }

    fn epoch(&self, epoch: usize, epochs: usize, loss: f64, extra: &str, rate: f64, secs: f64) {
        if !self.quiet {
            self.bar.suspend(|| {
                eprintln!(
                    "epoch {}/{epochs}: loss {loss:.4}{extra}, {rate:.0} {}/s, {secs:.1} s",
                    epoch + 1,
                    self.unit
                )
            });
        }
    }
}
