//! The subcommands, one file per group; what they share is here.

pub mod bench;
pub mod caption;
pub mod catalog;
pub mod eval;
pub mod generate;
pub mod serve;
pub mod train;

use std::path::Path;

use anyhow::{Context, Result};
use clap::Args;

use crate::device::{self, DeviceArg, OnBackend};

#[derive(Args, Clone)]
pub struct DeviceOpt {
    /// cpu, wgpu, wgpu:cpu, wgpu:N, cuda or cuda:N
    #[arg(long, default_value = "cpu")]
    pub device: DeviceArg,
}

impl DeviceOpt {
    /// Opens the device (a one-line error when it is absent) and runs `job` on it.
    pub fn run<J: OnBackend>(&self, job: J) -> Result<J::Output> {
        device::on(&self.device.open()?, job)
    }
}

/// Prints a value as pretty JSON.
pub fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Writes `bytes` to `path` atomically, naming the file on failure.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    vitrine_data::fsio::atomic_save(path, bytes)
        .with_context(|| format!("writing {}", path.display()))
}
