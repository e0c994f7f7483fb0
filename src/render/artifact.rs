//! `adaptor show`: an artifact's `_manifest.json` in human form (what it is, how and when it was
//! built, from what, which files), and its stage log with `--verbose`.

use std::fmt::Write as _;

use pipeline::store::ArtifactManifest;

use super::human_bytes;

/// The description of `m`, followed by `log` when given.
pub fn render_show(m: &ArtifactManifest, log: Option<&str>) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "artifact  {}/{}", m.kind, m.key);
    let _ = writeln!(s, "instance  {}", m.instance);
    let _ = writeln!(s, "manifest  {}", m.manifest);
    let _ = writeln!(s, "stage     {} version {}", m.kind, m.version);
    let _ = writeln!(
        s,
        "built     {} in {:.2}s on {} by {}",
        pipeline::ops::format_unix(m.started_unix),
        m.seconds,
        m.host,
        m.tool
    );
    if let Some(mib) = m.peak_rss_mib {
        let _ = writeln!(s, "memory    peak {mib} MiB (its processes)");
    }
    if m.params.is_empty() {
        let _ = writeln!(s, "params    (none)");
    } else {
        let _ = writeln!(s, "params");
        for (k, v) in &m.params {
            let _ = writeln!(s, "  {k} = {v}");
        }
    }
    if !m.inputs.is_empty() {
        let _ = writeln!(s, "inputs");
        for (slot, recs) in &m.inputs {
            for r in recs {
                let _ = writeln!(
                    s,
                    "  {slot} <- {} ({})",
                    r.reference,
                    &r.key[..12.min(r.key.len())]
                );
            }
        }
    }
    let total: u64 = m.files.iter().map(|f| f.bytes).sum();
    let _ = writeln!(s, "files     {} ({})", m.files.len(), human_bytes(total));
    for f in &m.files {
        let _ = writeln!(
            s,
            "  {:<40} {:>10}  {}",
            f.path,
            human_bytes(f.bytes),
            &f.blake3[..12]
        );
    }
    if let Some(log) = log {
        let _ = writeln!(s, "\nlog:\n{log}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::manifest;
    use super::*;

    #[test]
    fn show() {
        let m = manifest(r#"{"run": "cat $IN_DEPS/notes.txt > $OUT/o", "vars": {"seed": 1}}"#);
        insta::assert_snapshot!(render_show(&m, None));
    }

    #[test]
    fn show_verbose_with_log_and_no_params() {
        let m = manifest("{}");
        insta::assert_snapshot!(render_show(&m, Some("reading notes.txt\nwrote o")));
    }
}
