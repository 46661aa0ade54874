//! Flamegraph SVGs with inferno, from folded stacks (`analysis::fold`): kernel frames carry
//! inferno's `_[k]` annotation and inlined ones `_[i]`, so the `java` palette colours them apart
//! from user code.

use std::io::Write;

use anyhow::{Context as _, Result};
use inferno::flamegraph::{self, Options, Palette, color::MultiPalette};

/// A differential flamegraph: NEW's stacks, coloured red where they grew against BASE and blue
/// where they shrank, with BASE scaled to NEW's total (inferno's normalized differential mode).
pub fn differential_svg(base: &[String], new: &[String], title: &str, out: impl Write) -> Result<()> {
    let mut merged = Vec::new();
    let diff_options = inferno::differential::Options { normalize: true, ..Default::default() };
    inferno::differential::from_readers(
        diff_options,
        base.join("\n").as_bytes(),
        new.join("\n").as_bytes(),
        &mut merged,
    )
    .context("cannot merge the two recordings' stacks")?;
    let merged = String::from_utf8(merged).context("merged stacks are not UTF-8")?;
    let mut options = Options::default();
    options.title = title.to_string();
    options.count_name = "samples".to_string();
    flamegraph::from_lines(&mut options, merged.lines(), out).context("cannot render the flamegraph")
}

/// Renders sorted folded lines (as `folded` returns them), whose counts are `count_name`
/// ("samples"; "us" off CPU).
pub fn svg(lines: &[String], title: &str, count_name: &str, out: impl Write) -> Result<()> {
    let mut options = Options::default();
    options.no_sort = true;
    options.title = title.to_string();
    options.count_name = count_name.to_string();
    options.colors = Palette::Multi(MultiPalette::Java);
    flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), out).context("cannot render the flamegraph")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::fold::{Selection, folded, tests::recording};

    #[test]
    fn svg_names_the_frames() {
        let (recording, stacks) = recording();
        let mut out = Vec::new();
        svg(&folded(&recording, &stacks, &Selection::default()), "test", "samples", &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("<?xml") && text.contains("read_file") && text.contains("vfs_read"));
    }
}
