//! Click-through scorer training (`task = "score"`).
//!
//! Batches are groups of A/B tests: every distinct headline in the group is scored once and
//! the loss is the evidence-weighted pairwise logistic loss (RankNet) over the group's pairs,
//! `Σ w · softplus(-(s_winner - s_loser)) / Σ w`, with `w` from [`PairRule`]. A seeded share
//! of the training tests (`train.dev_fraction`) is held out as a development split; after
//! every epoch its pairwise accuracy picks the best weights (`best-model.mpk`), which become
//! the run's model. The validation split is only reported, never used to choose. Each
//! member of an ensemble (`model.members`) trains on its own shuffled order of the tests.
//!
//! `init = "runs/copy-…"` warm-starts the GPT trunk from a copy run: its tokenizer, its
//! model size and its weights; the head starts fresh. With `model.trunk = "bert"`, `init`
//! names a pretrained BERT-family folder (or `hf:` repo) whose tokenizer, architecture and
//! weights the trunk takes; `train.head_init = "frozen-lr"` then starts the head from a
//! logistic regression on the frozen embeddings (see `vitrine_infer::score::frozen`).

use std::collections::{BTreeMap, HashMap};

use burn::module::AutodiffModule;
use burn::tensor::activation::softplus;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Int, Tensor, TensorData};
use rand::seq::SliceRandom;
use rand::{rngs::StdRng, SeedableRng};
use serde::{Deserialize, Serialize};
use vitrine_data::copy::SPECIAL_TOKENS;
use vitrine_data::ctr::{read_ab_tests, PairRule, PairwiseMetrics};
use vitrine_data::split::mix;
use vitrine_infer::copy::LmRun;
use vitrine_infer::run::{files, load_module_bytes, save_module, RunDir};
use vitrine_infer::score::frozen::{fit_frozen_lr, FrozenLr};
use vitrine_infer::score::{dev_split, pad, EncodedPairs, HeadInit, RowCodec, ScoreRunConfig};
use vitrine_infer::sentence::{embed_rows, SentenceEncoder};
use vitrine_infer::tokenizer::build_tokenizer;
use vitrine_models::scorer::{Scorer, Trunk, TrunkKind};

use crate::error::{io_err, Result, TrainError};
use crate::start::{Job, RunStart, Summary, Trained};
use crate::trainer::{BatchAt, FitSummary, Task};

/// Training pairs grouped by test: (variant rows, pairs as (winner row, loser row, weight)).
struct TrainGroups {
    rows: Vec<Vec<u32>>,
    /// Per test with at least one kept pair.
    groups: Vec<Vec<(usize, usize, f32)>>,
    pairs: usize,
}

impl TrainGroups {
    fn new(enc: EncodedPairs, rule: &PairRule) -> Self {
        // Ordered by test index, so batches are a pure function of the data and the seed.
        let mut by_test: BTreeMap<usize, Vec<(usize, usize, f32)>> = BTreeMap::new();
        let mut pairs = 0;
        for p in &enc.pairs.pairs {
            if let Some(w) = rule.weight(p.z) {
                by_test.entry(p.test).or_default().push((
                    enc.row_of[p.winner()],
                    enc.row_of[p.loser()],
                    w as f32,
                ));
                pairs += 1;
            }
        }
        Self {
            rows: enc.rows,
            groups: by_test.into_values().collect(),
            pairs,
        }
    }
}

struct ScoreTask<'a, B: AutodiffBackend> {
    train: TrainGroups,
    dev: Option<EncodedPairs>,
    config: &'a ScoreRunConfig,
    run: &'a RunDir,
    best: Option<Best>,
    device: B::Device,
}

/// The best development-split epoch so far (`best.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Best {
    epoch: usize,
    dev_accuracy: f64,
}

impl<B: AutodiffBackend> ScoreTask<'_, B> {
    /// Member `m`'s RankNet loss over the tests `batch`: every distinct headline of the
    /// batch scored once, `Σ w · softplus(-(s_winner - s_loser)) / Σ w` -> (loss, pairs).
    fn member_loss(
        &self,
        model: &Scorer<B>,
        m: usize,
        batch: &[usize],
    ) -> Result<(Tensor<B, 1>, usize)> {
        let all_rows = &self.train.rows;
        let mut local: HashMap<usize, usize> = HashMap::new();
        let mut rows: Vec<&[u32]> = Vec::new();
        let (mut win, mut lose, mut weight) = (Vec::new(), Vec::new(), Vec::new());
        let mut slot = |r: usize| {
            *local.entry(r).or_insert_with(|| {
                rows.push(&all_rows[r]);
                rows.len() - 1
            }) as i64
        };
        for &g in batch {
            for &(w, l, wt) in &self.train.groups[g] {
                win.push(slot(w));
                lose.push(slot(l));
                weight.push(wt);
            }
        }
        let (tokens, lengths) = pad::<B>(&rows, &self.device);
        let s = model.forward_member(m, tokens, &lengths)?; // [R]
        let n = win.len();
        let idx =
            |v: Vec<i64>| Tensor::<B, 1, Int>::from_data(TensorData::new(v, [n]), &self.device);
        let margin = s.clone().select(0, idx(win)) - s.select(0, idx(lose)); // [P]
        let total: f32 = weight.iter().sum();
        let w = Tensor::<B, 1>::from_data(TensorData::new(weight, [n]), &self.device);
        let loss = (softplus(margin.neg(), 1.0) * w)
            .sum()
            .div_scalar(total.max(1e-12));
        Ok((loss, n))
    }
}

impl<B: AutodiffBackend> Task<B, Scorer<B>> for ScoreTask<'_, B> {
    fn batches_per_epoch(&self) -> usize {
        self.train.groups.len() / self.config.train.fit.batch_size
    }

    fn loss(&mut self, model: &Scorer<B>, at: BatchAt) -> Result<(Tensor<B, 1>, usize)> {
        let bs = self.config.train.fit.batch_size;
        let members = model.members.len();
        let mut loss: Option<Tensor<B, 1>> = None;
        let mut pairs = 0;
        let epoch_seed = mix(self.config.seed, at.epoch as u64);
        for m in 0..members {
            // Each member draws its own order of the tests, so an ensemble's members see
            // different batches (member 0 the order a single scorer sees).
            let seed = if m == 0 {
                epoch_seed
            } else {
                mix(epoch_seed, m as u64)
            };
            let mut order: Vec<usize> = (0..self.train.groups.len()).collect();
            order.shuffle(&mut StdRng::seed_from_u64(seed));
            let batch = at.shard.of(&order[at.batch * bs..(at.batch + 1) * bs]);
            let (member_loss, n) = self.member_loss(model, m, batch)?;
            pairs += n;
            loss = Some(match loss {
                Some(l) => l + member_loss,
                None => member_loss,
            });
        }
        let loss = loss.ok_or_else(|| TrainError::invalid("a scorer with no members"))?;
        // Each member's own weighted loss, averaged over members.
        Ok((loss.div_scalar(members as f32), pairs / members))
    }

    fn unit(&self) -> &'static str {
        "pairs"
    }

    fn epoch_end(&mut self, model: &Scorer<B>, epoch: usize) -> Result<serde_json::Value> {
        let Some(dev) = &self.dev else {
            return Ok(serde_json::Value::Null);
        };
        let inner = model.valid();
        let m = dev.metrics(
            &inner,
            &self.config.pairs,
            self.config.limits.batch_size,
            &self.device,
        )?;
        if self
            .best
            .as_ref()
            .is_none_or(|b| m.accuracy > b.dev_accuracy)
        {
            save_module(inner, &self.run.file(files::BEST_MODEL))?;
            let best = Best {
                epoch: epoch + 1,
                dev_accuracy: m.accuracy,
            };
            self.run.save_json(files::BEST, &best)?;
            self.best = Some(best);
        }
        Ok(serde_json::json!({
            "dev_accuracy": m.accuracy,
            "dev_significant_accuracy": m.significant_accuracy,
            "dev_auc": m.auc,
        }))
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub train_tests: usize,
    pub train_pairs: usize,
    pub dev_tests: usize,
    pub dev: Option<PairwiseMetrics>,
    /// The epoch whose weights the run keeps (None: the last).
    pub best_epoch: Option<usize>,
    pub truncated_headlines: usize,
    pub parameters: usize,
    pub warm_start: Option<String>,
    /// The frozen-embedding logistic regression the heads started from.
    pub frozen_lr: Option<FrozenLrReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FrozenLrReport {
    pub l2: f64,
    pub dev: Option<PairwiseMetrics>,
    pub secs: f64,
}

impl Summary for Report {
    fn summary(&self, fit: &FitSummary) -> String {
        let dev = match (&self.dev, self.best_epoch) {
            (Some(m), Some(e)) => format!(
                ", dev pairwise accuracy {:.4} (epoch {e} kept, {} dev tests)",
                m.accuracy, self.dev_tests
            ),
            _ => String::new(),
        };
        format!(
            "last epoch loss {:.4}{dev}, {:.0} pairs/s, {:.1} s ({} train tests, {} pairs, {} parameters)",
            fit.last_epoch_loss,
            fit.examples_per_sec,
            fit.wall_secs,
            self.train_tests,
            self.train_pairs,
            self.parameters
        )
    }
}

/// Trains (or resumes, with `opts.resume`) a run of this task (`tasks::Score`).
pub fn train<B: AutodiffBackend>(job: Job<'_, ScoreRunConfig, B>) -> Result<Trained<Report>> {
    let (run, device, quiet) = (job.run, job.device, job.opts.quiet());
    let mut start = RunStart::open(job, |_| Ok(()))?;
    let train_tests = read_ab_tests(&start.config.data.train)?;
    // Tokenizer and trunk: the run's own tokenizer when resuming (the checkpoint then
    // replaces the weights), the init model's for a warm start, else a new one.
    let warm = match (&start.config.init, start.config.model.trunk) {
        (Some(init), TrunkKind::Gpt) if !start.resume => {
            Some(Warm::Copy(Box::new(warm_start::<B>(init, device)?)))
        }
        (Some(init), TrunkKind::Bert) if !start.resume => {
            let spec = init.display().to_string();
            Some(Warm::Bert(Box::new(SentenceEncoder::<B>::load(
                &spec, device,
            )?)))
        }
        _ => None,
    };
    let tokenizer = match &warm {
        Some(Warm::Copy(lm)) => {
            start.config.model.gpt = lm.config.model.clone();
            start.tokenizer(|_| Ok(lm.tokenizer.clone()))?
        }
        Some(Warm::Bert(enc)) => {
            start.config.model.bert = Some(enc.config.clone());
            vitrine_infer::config::RunConfig::validate(&start.config)?;
            start.tokenizer(|_| Ok(enc.tokenizer.clone()))?
        }
        None => start.tokenizer(|config| {
            let texts = train_tests
                .iter()
                .flat_map(|t| t.variants.iter().map(|v| v.text.as_str()));
            let source = config.tokenizer.as_ref().expect("validated");
            Ok(build_tokenizer(source, texts, &SPECIAL_TOKENS)?)
        })?,
    };
    start.create(Some(&tokenizer))?;
    let config = &start.config;
    let codec = RowCodec::of(config);
    let (fit_tests, dev_tests) =
        dev_split(train_tests, config.train.task.dev_fraction, config.seed);
    let fit_enc = EncodedPairs::new(&fit_tests, &tokenizer, &codec)?;
    let dev = (!dev_tests.is_empty())
        .then(|| EncodedPairs::new(&dev_tests, &tokenizer, &codec))
        .transpose()?;
    let mut frozen_lr = None;
    let model = start.init_model(|| {
        let Some(warm) = warm else {
            return Ok(config.model.init::<B>(device)?);
        };
        // Every member starts from the init model's trunk; their heads differ.
        let members = config.model.members;
        let (trunk, bert) = match warm {
            Warm::Copy(lm) => (Trunk::Gpt(lm.model), None),
            Warm::Bert(enc) => (Trunk::Bert(enc.model.clone()), Some(enc.model)),
        };
        let mut model = config.model.with_trunks(vec![trunk; members], device)?;
        if let (Some(bert), HeadInit::FrozenLr) = (bert, config.train.task.head_init) {
            let started = std::time::Instant::now();
            let bert = bert.valid();
            let batch = config.limits.batch_size;
            let fit_emb = embed_rows(&bert, &fit_enc.rows, batch)?;
            let dev_emb = match &dev {
                Some(d) => Some(embed_rows(&bert, &d.rows, batch)?),
                None => None,
            };
            let dev_pair = dev.as_ref().zip(dev_emb.as_deref());
            let lr: FrozenLr =
                fit_frozen_lr(&fit_enc, &fit_emb, dev_pair, &config.pairs, bert.d_model());
            model.set_heads(&lr.w, 0.0)?;
            let report = FrozenLrReport {
                l2: lr.l2,
                dev: lr.dev,
                secs: started.elapsed().as_secs_f64(),
            };
            if !quiet {
                eprintln!(
                "heads start from the frozen-embedding logistic regression: l2 = {}, dev pairwise accuracy {} ({:.1} s)",
                report.l2,
                report.dev.as_ref().map_or("-".into(), |m| format!("{:.4}", m.accuracy)),
                report.secs
            );
            }
            frozen_lr = Some(report);
        }
        Ok(model)
    })?;
    let truncated = fit_enc.truncated + dev.as_ref().map_or(0, |d| d.truncated);
    let train = TrainGroups::new(fit_enc, &config.pairs);
    let parameters = burn::module::Module::num_params(&model);
    let best = if start.resume && run.file(files::BEST).exists() {
        Some(run.load_json::<Best>(files::BEST)?)
    } else {
        None
    };
    let (train_tests, train_pairs) = (train.groups.len(), train.pairs);
    let mut task = ScoreTask::<B> {
        train,
        dev,
        config,
        run,
        best,
        device: device.clone(),
    };
    let (model, fit) = start.fit(model, &mut task)?;
    let best_epoch = task.best.as_ref().map(|b| b.epoch);
    // The kept model: the best dev epoch's weights (the last epoch's without a dev split).
    let kept = match &task.dev {
        Some(_) if start.chief() && !fit.stopped_early => {
            let path = run.file(files::BEST_MODEL);
            let bytes = std::fs::read(&path).map_err(io_err(&path))?;
            load_module_bytes(model.valid(), bytes, &path, device)?
        }
        _ => model.valid(),
    };
    let dev_metrics = match &task.dev {
        Some(dev) if start.chief() && !fit.stopped_early => {
            Some(dev.metrics(&kept, &config.pairs, config.limits.batch_size, device)?)
        }
        _ => None,
    };
    start.save_model(kept, &fit)?;
    let report = Report {
        train_tests,
        train_pairs,
        dev_tests: dev_tests.len(),
        dev: dev_metrics,
        best_epoch,
        truncated_headlines: truncated,
        parameters,
        warm_start: config.init.as_ref().map(|p| p.display().to_string()),
        frozen_lr,
    };
    start.report(fit, report)
}

/// What a fresh scorer's trunk starts from (boxed: both are large and short-lived).
enum Warm<B: AutodiffBackend> {
    Copy(Box<LmRun<B>>),
    Bert(Box<SentenceEncoder<B>>),
}

/// The copy run a scorer warm-starts from.
fn warm_start<B: AutodiffBackend>(init: &std::path::Path, device: &B::Device) -> Result<LmRun<B>> {
    let lm = LmRun::<B>::load(init, device)?;
    if !lm.config.is_copy() {
        return Err(TrainError::invalid(format!(
            "init = {}: a scorer warm-starts from a copy run (task \"copy\"), this is task {:?}",
            init.display(),
            lm.config.task
        )));
    }
    Ok(lm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vitrine_data::ctr::AbTest;
    use vitrine_data::text::Tokenizer;

    #[test]
    fn dev_split_is_seeded_and_disjoint() {
        let tests: Vec<AbTest> = (0..20)
            .map(|i| AbTest {
                id: format!("t{i}"),
                variants: Vec::new(),
            })
            .collect();
        let (fit, dev) = dev_split(tests.clone(), 0.1, 3);
        assert_eq!((fit.len(), dev.len()), (18, 2));
        let (fit2, dev2) = dev_split(tests.clone(), 0.1, 3);
        assert_eq!((fit, dev.clone()), (fit2, dev2));
        let (_, dev3) = dev_split(tests, 0.1, 4);
        assert_ne!(dev, dev3);
    }

    /// Variants sharing a headline share an encoded row; training groups hold only kept
    /// pairs, oriented winner first, with the rule's weights.
    #[test]
    fn training_groups_share_rows_and_keep_weighted_pairs() {
        use vitrine_data::ctr::Variant;
        let v = Variant::new;
        let tests = vec![
            // z(0,1) = 1.98 (full weight), z(0,2) = 0.23 (dropped by min_z = 0.5)
            AbTest::new(
                "a",
                vec![v("one", 100, 10), v("two", 100, 20), v("three", 100, 11)],
            ),
            AbTest::new("b", vec![v("two", 1000, 10), v("four", 1000, 50)]),
            AbTest::new("c", vec![v("same", 10, 1), v("same", 10, 5)]),
        ];
        let tok = Tokenizer::train_bpe(
            ["one two three four same"].into_iter(),
            300,
            &SPECIAL_TOKENS,
        )
        .unwrap();
        let enc = EncodedPairs::new(&tests, &tok, &RowCodec::Gpt { n_ctx: 64 }).unwrap();
        // Distinct headlines: one, two, three, four, same.
        assert_eq!(enc.rows.len(), 5);
        assert_eq!(enc.row_of, vec![0, 1, 2, 1, 3, 4, 4]);
        let rule = PairRule {
            min_z: 0.5,
            ..PairRule::default()
        };
        let rows = enc.rows.len();
        let g = TrainGroups::new(enc, &rule);
        assert_eq!(g.rows.len(), rows);
        // Test a: (two beats one) kept at full weight, (three beats one) dropped, (two beats
        // three) at z = 1.76 -> weight 0.90; test b: four beats two; test c: no pair.
        assert_eq!(g.groups.len(), 2);
        assert_eq!(g.pairs, 3);
        let a: Vec<(usize, usize)> = g.groups[0].iter().map(|&(w, l, _)| (w, l)).collect();
        assert_eq!(a, vec![(1, 0), (1, 2)]);
        assert!((g.groups[0][0].2 - 1.0).abs() < 1e-6);
        assert!((g.groups[0][1].2 - 1.7585 / 1.96).abs() < 1e-3);
        assert_eq!(g.groups[1][0].0, 3);
        assert_eq!(g.groups[1][0].1, 1);
    }
}
