//! The subcommands, one file per group; what they share is here.

pub mod bench;
pub mod caption;
pub mod catalog;
pub mod embed;
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

/// Standard output was closed by its reader (`vitrine search … | head -3`): the normal end
/// of output, as for `ls | head`, not a failure. `main` exits 0 on it, silently.
#[derive(Debug)]
pub struct StdoutClosed;

impl std::fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("standard output was closed")
    }
}

impl std::error::Error for StdoutClosed {}

/// Writes to standard output. `println!` would panic on a closed pipe (Rust ignores
/// SIGPIPE, so the write fails with EPIPE); this returns [`StdoutClosed`] instead.
pub fn write_stdout(args: std::fmt::Arguments<'_>) -> Result<()> {
    use std::io::Write;
    std::io::stdout().lock().write_fmt(args).map_err(|e| {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            anyhow::Error::new(StdoutClosed)
        } else {
            anyhow::Error::new(e).context("writing to standard output")
        }
    })
}

/// `print!` that returns `Result` (see [`write_stdout`]): `out!(…)?`.
macro_rules! out {
    ($($arg:tt)*) => { $crate::cli::write_stdout(format_args!($($arg)*)) };
}

/// `println!` that returns `Result` (see [`write_stdout`]): `outln!(…)?`.
macro_rules! outln {
    ($($arg:tt)*) => { $crate::cli::write_stdout(format_args!("{}\n", format_args!($($arg)*))) };
}

pub(crate) use {out, outln};

/// Prints a value as pretty JSON.
pub fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    outln!("{}", serde_json::to_string_pretty(value)?)
}

/// Writes `bytes` to `path` atomically, naming the file on failure.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    vitrine_data::fsio::atomic_save(path, bytes)
        .with_context(|| format!("writing {}", path.display()))
}
