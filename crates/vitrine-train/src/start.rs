//! Starting or resuming a run, the same way for every task: which config is trained,
//! what rank 0 writes before the first step, the checks a resumed run must pass, the
//! seeded initial model, and what is kept at the end.
//!
//! A trainer reads as these steps: [`RunStart::open`] → its data → [`RunStart::tokenizer`]
//! → [`RunStart::create`] / [`RunStart::keep`] → [`RunStart::init_model`] →
//! [`RunStart::fit`] → [`RunStart::save_model`] and [`RunStart::report`].

use burn::module::{AutodiffModule, Module};
use burn::tensor::backend::{AutodiffBackend, Backend};
use serde::de::DeserializeOwned;
use serde::Serialize;
use vitrine_data::fsio::atomic_save;
use vitrine_data::text::Tokenizer;
use vitrine_infer::config::RunConfig;
use vitrine_infer::run::{files, save_module, RunDir};

use crate::dist::{self, Cluster};
use crate::error::{io_err, Result, TrainError};
use crate::trainer::{fit, FitOptions, FitSummary, Task};

/// A task `vitrine train` runs: its config, its trainer and what it reports.
pub trait TrainTask {
    type Config: RunConfig + Sync;
    type Report: Summary + Serialize + Send + 'static;
    /// Trains a fresh run from `job.config`, or resumes `job.run` (`opts.resume`).
    fn train<B: AutodiffBackend>(job: Job<'_, Self::Config, B>) -> Result<Trained<Self::Report>>;
}

/// What a trainer is given: the config of a fresh run (None when resuming), the run
/// directory, the loop's options and the device of this worker.
pub struct Job<'a, C, B: Backend> {
    pub config: Option<C>,
    pub run: &'a RunDir,
    pub opts: &'a FitOptions,
    pub device: &'a B::Device,
}

/// A trainer's report: the loop's summary and the task's own figures (saved together as
/// `train-report.json`).
#[derive(Debug, Clone, Serialize)]
pub struct Trained<R> {
    pub fit: FitSummary,
    #[serde(flatten)]
    pub report: R,
}

/// A task's figures as the end of the line `vitrine train` prints.
pub trait Summary {
    /// What the run reached ("val loss 1.81 (perplexity 6.1), …").
    fn summary(&self, fit: &FitSummary) -> String;
}

/// Trains task `T` into `run` with one data-parallel worker per device of `devices`
/// ([`dist::launch`]); returns rank 0's report.
pub fn train_on<T: TrainTask, B: AutodiffBackend>(
    config: Option<T::Config>,
    run: RunDir,
    opts: FitOptions,
    devices: Vec<B::Device>,
    cluster: &Cluster,
) -> Result<Trained<T::Report>> {
    dist::launch::<B, _, _>(devices, cluster, move |peer, device| {
        let opts = FitOptions {
            peer,
            ..opts.clone()
        };
        let job = Job {
            config: config.clone(),
            run: &run,
            opts: &opts,
            device: &device,
        };
        T::train::<B>(job)
    })
}

/// A run being started (fresh) or resumed, with the config it trains.
pub struct RunStart<'a, C, B: Backend> {
    pub run: &'a RunDir,
    pub opts: &'a FitOptions,
    pub device: &'a B::Device,
    /// The config trained: the given one for a fresh run, the run's own when resuming.
    pub config: C,
    pub resume: bool,
}

impl<'a, C: RunConfig, B: AutodiffBackend> RunStart<'a, C, B> {
    /// The config to train: the job's after `adopt` (e.g. taking a pretrained model's
    /// architecture) for a fresh run, or the run's saved config when `opts.resume`. Checked,
    /// with the batch split over the workers and a fresh run's directory free.
    pub fn open(job: Job<'a, C, B>, adopt: impl FnOnce(&mut C) -> Result<()>) -> Result<Self> {
        let Job {
            config,
            run,
            opts,
            device,
        } = job;
        let resume = opts.resume;
        let config = if resume {
            if !run.checkpoint_path().exists() {
                let why = format!("nothing to resume: no {}", files::CHECKPOINT);
                return Err(run.error(why).into());
            }
            run.load_toml_config::<C>()?
        } else {
            let mut config =
                config.ok_or_else(|| TrainError::invalid("a config is required to start a run"))?;
            adopt(&mut config)?;
            config
        };
        config.validate()?;
        opts.check_start(run, config.fit().0.batch_size, !resume)?;
        Ok(Self {
            run,
            opts,
            device,
            config,
            resume,
        })
    }

    /// Whether this worker writes the run directory.
    pub fn chief(&self) -> bool {
        self.opts.is_chief()
    }

    /// The run's own tokenizer when resuming; otherwise the one `build` makes, whose size
    /// becomes the model's vocabulary. A resumed run's tokenizer must still match its model.
    pub fn tokenizer(&mut self, build: impl FnOnce(&C) -> Result<Tokenizer>) -> Result<Tokenizer> {
        let tokenizer = match self.saved_tokenizer()? {
            Some(t) => t,
            None => build(&self.config)?,
        };
        self.adopt_vocab(&tokenizer)?;
        Ok(tokenizer)
    }

    /// The run's `tokenizer.json` when resuming.
    pub fn saved_tokenizer(&self) -> Result<Option<Tokenizer>> {
        self.resume
            .then(|| Tokenizer::from_file(&self.run.file(files::TOKENIZER)))
            .transpose()
            .map_err(Into::into)
    }

    /// A fresh run takes the tokenizer's size as its vocabulary; a resumed one must have it.
    pub fn adopt_vocab(&mut self, tokenizer: &Tokenizer) -> Result<()> {
        let size = tokenizer.vocab_size();
        let Some((field, vocab)) = self.config.vocab_size_mut() else {
            return Ok(());
        };
        if !self.resume {
            *vocab = size;
        } else if *vocab != size {
            return Err(self
                .run
                .error(format!(
                    "tokenizer.json has {size} tokens but config.toml says {field} = {vocab}"
                ))
                .into());
        }
        Ok(())
    }

    /// Rank 0 of a fresh run creates the directory and writes `config.toml` (and the
    /// tokenizer); nothing happens on resume or on the other workers.
    pub fn create(&self, tokenizer: Option<&Tokenizer>) -> Result<()> {
        if self.resume || !self.chief() {
            return Ok(());
        }
        self.run.create()?;
        if let Some(t) = tokenizer {
            t.save(&self.run.file(files::TOKENIZER))?;
        }
        self.run.save_toml_config(&self.config)?;
        Ok(())
    }

    /// A file derived from the data (labels, a split): rank 0 of a fresh run writes it; a
    /// resumed run checks that the data still gives the same, or it would train on other
    /// items than its checkpoint did.
    pub fn keep<T: Serialize + DeserializeOwned + PartialEq>(
        &self,
        name: &str,
        value: &T,
    ) -> Result<()> {
        if self.resume {
            let saved: T = self.run.load_json(name)?;
            if saved != *value {
                return Err(self
                    .run
                    .error(format!(
                        "the data no longer matches the run's {name} (items were added, removed or relabelled since the run started): start a new run"
                    ))
                    .into());
            }
            return Ok(());
        }
        if self.chief() {
            self.run.save_json(name, value)?;
        }
        Ok(())
    }

    /// A text file rank 0 of a fresh run writes (e.g. the training lines).
    pub fn keep_text(&self, name: &str, text: &str) -> Result<()> {
        if self.resume || !self.chief() {
            return Ok(());
        }
        let path = self.run.file(name);
        atomic_save(&path, text.as_bytes()).map_err(io_err(&path))
    }

    /// The initial model: seeded from the config, built by `init`, every parameter drawn
    /// under the data-parallel seeding lock. A resumed run's weights then come from its
    /// checkpoint.
    pub fn init_model<M: Module<B>>(&self, init: impl FnOnce() -> Result<M>) -> Result<M> {
        let seeded = crate::dist::seed_guard::<B>(self.device, self.config.fit().1);
        let model = init()?;
        Ok(seeded.finish(model))
    }

    /// Trains with the shared loop and the config's `[train]` loop settings.
    pub fn fit<M: AutodiffModule<B>>(
        &self,
        model: M,
        task: &mut impl Task<B, M>,
    ) -> Result<(M, FitSummary)> {
        let (cfg, _) = self.config.fit();
        fit(model, task, cfg, self.run, self.opts, self.device)
    }

    /// Rank 0 saves the final weights, unless training stopped early (then the checkpoint
    /// is the run's state).
    pub fn save_model<I: Backend, M: Module<I>>(&self, model: M, fit: &FitSummary) -> Result<()> {
        if self.chief() && !fit.stopped_early {
            save_module(model, &self.run.model_path())?;
        }
        Ok(())
    }

    /// The trainer's report; rank 0 writes it as `train-report.json`.
    pub fn report<R: Serialize>(&self, fit: FitSummary, report: R) -> Result<Trained<R>> {
        let trained = Trained { fit, report };
        if self.chief() {
            self.run.save_json(files::TRAIN_REPORT, &trained)?;
        }
        Ok(trained)
    }
}
