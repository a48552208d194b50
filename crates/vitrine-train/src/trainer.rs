//! The training loop every task shares: AdamW, warm-up + cosine schedule, gradient
//! clipping, progress bar, `metrics.jsonl`, atomic checkpoints and exact resume.
//!
//! A task supplies batches as a pure function of (epoch, batch index), so resuming from
//! a checkpoint replays exactly the batches an uninterrupted run would have seen, and
//! data-parallel workers ([`crate::dist`]) each take their own share of the same batch.

use std::io::{IsTerminal, Write};
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

use crate::checkpoint::{Checkpoint, TrainState};
use crate::dist::{self, Peer, Shard};
use crate::error::{Result, TrainError};
use crate::run::{load_module_bytes, module_to_bytes, Rec, RunDir};
use crate::schedule::Schedule;

pub trait Task<B: AutodiffBackend, M> {
    fn batches_per_epoch(&self) -> usize;
    /// Forward pass and loss of `shard` of batch `batch` of `epoch`: (scalar loss, examples
    /// in it). The shards of one batch are disjoint and together are the whole batch.
    fn loss(
        &mut self,
        model: &M,
        epoch: usize,
        batch: usize,
        shard: Shard,
    ) -> Result<(Tensor<B, 1>, usize)>;
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

/// What the loop needs from a task's config: optimiser, schedule and bookkeeping. Tasks
/// whose `[train]` section holds nothing else use it as that section directly.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoopConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub schedule: Schedule,
    pub weight_decay: f64,
    pub beta_1: f64,
    pub beta_2: f64,
    /// Per-parameter gradient-norm clip (0 = off).
    pub grad_clip: f64,
    pub checkpoint_every_steps: usize,
    pub log_every_steps: usize,
}

impl Default for LoopConfig {
    fn default() -> Self {
        Self {
            epochs: 30,
            batch_size: 32,
            schedule: Schedule::default(),
            weight_decay: 0.01,
            beta_1: 0.9,
            beta_2: 0.99,
            grad_clip: 1.0,
            checkpoint_every_steps: 0,
            log_every_steps: 50,
        }
    }
}

impl LoopConfig {
    /// Checks what every `[train]` section shares (names as in the config file).
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(TrainError::Invalid(m));
        if self.epochs == 0 || self.epochs > 100_000 {
            return bad(format!(
                "train.epochs = {} (allowed 1..=100000)",
                self.epochs
            ));
        }
        if self.batch_size == 0 || self.batch_size > 65_536 {
            return bad(format!(
                "train.batch_size = {} (allowed 1..=65536)",
                self.batch_size
            ));
        }
        for (name, b) in [("beta_1", self.beta_1), ("beta_2", self.beta_2)] {
            if !(0.0..1.0).contains(&b) {
                return bad(format!("train.{name} = {b} (allowed 0 <= beta < 1)"));
            }
        }
        let s = &self.schedule;
        if !(s.lr > 0.0) || s.min_lr < 0.0 {
            return bad(format!(
                "train.schedule.lr = {}, min_lr = {} (lr > 0, min_lr >= 0)",
                s.lr, s.min_lr
            ));
        }
        Ok(())
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
    pub param_trace: Option<std::path::PathBuf>,
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
            return Err(TrainError::Run {
                path: run.path.clone(),
                message:
                    "already holds a run: pass --resume to continue it, or choose another --run-dir"
                        .into(),
            });
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

/// The optimiser every run uses: AdamW with the config's betas, weight decay and clipping.
pub fn optimizer<B: AutodiffBackend, M: AutodiffModule<B>>(
    cfg: &LoopConfig,
) -> OptimizerAdaptor<AdamW, M, B> {
    AdamWConfig::new()
        .with_beta_1(cfg.beta_1 as f32)
        .with_beta_2(cfg.beta_2 as f32)
        .with_weight_decay(cfg.weight_decay as f32)
        .with_grad_clipping(
            (cfg.grad_clip > 0.0).then(|| GradientClippingConfig::Norm(cfg.grad_clip as f32)),
        )
        .init::<B, M>()
}

pub fn fit<B, M, T>(
    mut model: M,
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
    let per_epoch = task.batches_per_epoch();
    if per_epoch == 0 {
        return Err(TrainError::Invalid(format!(
            "no full batch of {} {} in an epoch: use a smaller train.batch_size or more data",
            cfg.batch_size,
            task.unit()
        )));
    }
    dist::check_batch_size(cfg.batch_size, opts.world())?;
    let shard = opts.peer.as_ref().map_or(Shard::WHOLE, Peer::shard);
    let chief = opts.is_chief();
    let unit = task.unit();
    let unit_short = if unit == "tokens" { "tok" } else { "ex" };
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

    let ckpt_path = run.checkpoint_path();
    if opts.resume {
        let ckpt = Checkpoint::load(&ckpt_path)?;
        if ckpt.state.total_steps != total_steps {
            return Err(TrainError::Checkpoint {
                path: ckpt_path,
                message: format!(
                    "was written for {} total steps, this config gives {total_steps}: the run's config changed",
                    ckpt.state.total_steps
                ),
            });
        }
        model = load_module_bytes(model, ckpt.module, &ckpt_path, device)?;
        let record = Recorder::<B>::load(&Rec::default(), ckpt.optimizer, device).map_err(|e| {
            TrainError::Checkpoint {
                path: ckpt_path.clone(),
                message: format!("cannot load optimiser state: {e}"),
            }
        })?;
        optim = optim.load_record(record);
        state = ckpt.state;
        if chief {
            run.truncate_metrics_after(state.step)?;
        }
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
    let mut trace = match &opts.param_trace {
        Some(base) => {
            let path = dist::trace_path(base, opts.peer.as_ref());
            let file = std::fs::File::create(&path).map_err(crate::error::io_err(&path))?;
            Some((path, std::io::BufWriter::new(file)))
        }
        None => None,
    };

    // Workers other than rank 0 stay silent: rank 0 reports the global batch's figures.
    let quiet = opts.quiet();
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
    bar.set_position(state.step as u64);

    let started = Instant::now();
    let mut examples_total = 0usize;
    let mut stopped_early = false;
    let mut last_epoch_loss = f64::NAN;
    let save = |model: &M, optim: &_, state: &TrainState| -> Result<()> {
        let optim: &OptimizerAdaptor<AdamW, M, B> = optim;
        Checkpoint {
            state: state.clone(),
            module: module_to_bytes(model.clone()),
            optimizer: Rec::default()
                .record(optim.to_record(), ())
                .expect("optimiser state serialises"),
        }
        .save(&ckpt_path)
    };

    while state.epoch < cfg.epochs {
        bar.set_prefix(format!("epoch {}/{}", state.epoch + 1, cfg.epochs));
        let epoch_started = Instant::now();
        let mut epoch_examples_now = 0usize;
        while state.batch_in_epoch < per_epoch {
            let lr = cfg.schedule.at(state.step, total_steps);
            let (loss, examples) = task.loss(&model, state.epoch, state.batch_in_epoch, shard)?;
            let loss_value: f32 = loss
                .clone()
                .into_data()
                .iter::<f32>()
                .next()
                .unwrap_or(f32::NAN);
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            let shard_loss = loss_value;
            // Every worker sees the global loss, so all of them stop together on a NaN.
            let (grads, loss_value, examples) = match &opts.peer {
                Some(peer) => {
                    let r = dist::reduce_step::<B, M>(
                        peer, &model, grads, loss_value, examples, state.step,
                    )?;
                    (r.grads, r.loss, r.examples)
                }
                None => (grads, loss_value, examples),
            };
            if !loss_value.is_finite() {
                return Err(TrainError::Diverged {
                    step: state.step,
                    loss: loss_value,
                });
            }
            model = optim.step(lr, model, grads);
            state.step += 1;
            state.batch_in_epoch += 1;
            state.epoch_loss_sum += loss_value as f64 * examples as f64;
            state.epoch_examples += examples;
            epoch_examples_now += examples;
            examples_total += examples;
            let rate = epoch_examples_now as f64 / epoch_started.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!(
                "loss {loss_value:.4} | {rate:.0} {unit_short}/s | lr {lr:.2e}"
            ));
            bar.inc(1);
            if let Some((path, out)) = &mut trace {
                let line = json!({
                    "step": state.step,
                    "rank": opts.peer.as_ref().map_or(0, |p| p.rank),
                    "shard_loss": shard_loss,
                    "loss": loss_value,
                    "values": dist::flat_values::<B, M>(&model),
                });
                writeln!(out, "{line}")
                    .and_then(|_| out.flush())
                    .map_err(crate::error::io_err(path))?;
            }
            if !interactive
                && !quiet
                && cfg.log_every_steps > 0
                && state.step % cfg.log_every_steps == 0
            {
                eprintln!(
                    "epoch {}/{} step {}/{total_steps} loss {loss_value:.4} {rate:.0} {unit_short}/s lr {lr:.2e}",
                    state.epoch + 1,
                    cfg.epochs,
                    state.step
                );
            }
            if chief
                && cfg.checkpoint_every_steps > 0
                && state.step % cfg.checkpoint_every_steps == 0
                && state.batch_in_epoch < per_epoch
            {
                save(&model, &optim, &state)?;
            }
        }
        let epoch_secs = epoch_started.elapsed().as_secs_f64();
        last_epoch_loss = state.epoch_loss_sum / state.epoch_examples.max(1) as f64;
        let extra = if chief {
            task.epoch_end(&model, state.epoch)?
        } else {
            serde_json::Value::Null
        };
        let mut line = json!({
            "epoch": state.epoch + 1,
            "step": state.step,
            "loss": last_epoch_loss,
            "lr": cfg.schedule.at(state.step.saturating_sub(1), total_steps),
            "epoch_secs": epoch_secs,
        });
        let mut extra_text = String::new();
        if let Some(map) = line.as_object_mut() {
            map.insert(
                format!("{unit}_per_sec"),
                json!(epoch_examples_now as f64 / epoch_secs.max(1e-9)),
            );
        }
        if let (Some(map), Some(add)) = (line.as_object_mut(), extra.as_object()) {
            for (k, v) in add {
                map.insert(k.clone(), v.clone());
                if let Some(f) = v.as_f64().filter(|f| f.fract() != 0.0) {
                    extra_text.push_str(&format!(", {k} {f:.4}"));
                }
            }
        }
        if chief {
            run.append_metrics(&line)?;
        }
        if !quiet {
            bar.suspend(|| {
                eprintln!(
                    "epoch {}/{}: loss {last_epoch_loss:.4}{extra_text}, {:.0} {unit}/s, {epoch_secs:.1} s",
                    state.epoch + 1,
                    cfg.epochs,
                    epoch_examples_now as f64 / epoch_secs.max(1e-9)
                )
            });
        }
        state.epoch += 1;
        state.batch_in_epoch = 0;
        state.epoch_loss_sum = 0.0;
        state.epoch_examples = 0;
        if chief {
            save(&model, &optim, &state)?;
        }
        if opts.stop_after_epochs.is_some_and(|n| state.epoch >= n) && state.epoch < cfg.epochs {
            stopped_early = true;
            break;
        }
    }
    bar.finish_and_clear();
    let wall_secs = started.elapsed().as_secs_f64();
    Ok((
        model,
        FitSummary {
            steps: state.step,
            epochs_completed: state.epoch,
            last_epoch_loss,
            wall_secs,
            examples_per_sec: examples_total as f64 / wall_secs.max(1e-9),
            stopped_early,
        },
    ))
}
