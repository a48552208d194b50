//! Training checkpoints: one file, written atomically, holding the training state (JSON),
//! the module weights and the optimiser state (both Burn records, MessagePack).
//!
//! ```text
//! b"VTRCKPT1" | u64 LE len + state JSON | u64 LE len + module | u64 LE len + optimiser
//! ```

use std::path::Path;

use serde::{Deserialize, Serialize};
use vitrine_data::fsio::atomic_save;

use crate::error::{io_err, Result, TrainError};

const MAGIC: &[u8; 8] = b"VTRCKPT1";

/// Where training stood when the checkpoint was written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimiser steps completed.
    pub step: usize,
    /// Epoch in progress (0-based) and batches of it completed.
    pub epoch: usize,
    pub batch_in_epoch: usize,
    pub total_steps: usize,
    /// Running sum of the current epoch's loss and examples seen, for its summary line.
    pub epoch_loss_sum: f64,
    pub epoch_examples: usize,
}

#[derive(Debug)]
pub struct Checkpoint {
    pub state: TrainState,
    pub module: Vec<u8>,
    pub optimizer: Vec<u8>,
}

impl Checkpoint {
    pub fn save(&self, path: &Path) -> Result<()> {
        let state = serde_json::to_vec(&self.state).expect("state serialises");
        let mut out =
            Vec::with_capacity(32 + state.len() + self.module.len() + self.optimizer.len());
        out.extend_from_slice(MAGIC);
        for part in [&state, &self.module, &self.optimizer] {
            out.extend_from_slice(&(part.len() as u64).to_le_bytes());
            out.extend_from_slice(part);
        }
        atomic_save(path, &out).map_err(io_err(path))
    }

    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(io_err(path))?;
        let bad = |message: &str| TrainError::checkpoint(path, message);
        if bytes.len() < 8 || &bytes[..8] != MAGIC {
            return Err(bad("not a Vitrine checkpoint (bad magic bytes)"));
        }
        let mut parts = Vec::with_capacity(3);
        let mut pos = 8usize;
        for _ in 0..3 {
            let len_bytes = bytes.get(pos..pos + 8).ok_or_else(|| bad("truncated"))?;
            let len = u64::from_le_bytes(len_bytes.try_into().expect("8 bytes")) as usize;
            pos += 8;
            let end = pos
                .checked_add(len)
                .filter(|&e| e <= bytes.len())
                .ok_or_else(|| bad("truncated"))?;
            parts.push(bytes[pos..end].to_vec());
            pos = end;
        }
        if pos != bytes.len() {
            return Err(bad("trailing bytes"));
        }
        let optimizer = parts.pop().expect("3 parts");
        let module = parts.pop().expect("3 parts");
        let state =
            serde_json::from_slice(&parts[0]).map_err(|e| bad(&format!("bad state: {e}")))?;
        Ok(Self {
            state,
            module,
            optimizer,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.ckpt");
        let state = TrainState {
            step: 7,
            epoch: 1,
            batch_in_epoch: 2,
            total_steps: 20,
            epoch_loss_sum: 1.5,
            epoch_examples: 8,
        };
        Checkpoint {
            state: state.clone(),
            module: vec![1, 2, 3],
            optimizer: vec![9; 5],
        }
        .save(&path)
        .unwrap();
        let back = Checkpoint::load(&path).unwrap();
        assert_eq!(back.state, state);
        assert_eq!(back.module, vec![1, 2, 3]);
        assert_eq!(back.optimizer, vec![9; 5]);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        assert!(Checkpoint::load(&path)
            .unwrap_err()
            .to_string()
            .contains("truncated"));
        std::fs::write(&path, b"junk").unwrap();
        assert!(Checkpoint::load(&path)
            .unwrap_err()
            .to_string()
            .contains("magic"));
    }
}
