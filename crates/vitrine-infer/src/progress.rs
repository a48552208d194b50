//! Progress bars for long work, shown only on a terminal.

use indicatif::ProgressBar;

/// A bar over `len` items labelled `what`; hidden when `quiet` or stderr is not a terminal.
pub fn progress_bar(len: usize, what: &str, quiet: bool) -> ProgressBar {
    use std::io::IsTerminal;
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} {per_sec} [{elapsed_precise}<{eta_precise}]",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    bar.set_prefix(what.to_string());
    bar
}
