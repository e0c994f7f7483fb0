//! `report.html`: one self-contained page (PNG plots as `data:` URIs, inline CSS, no script, no
//! network) with the results tables of `results.md` and the published numbers beside their cells,
//! the pre-training runs and curves, and for each cell links to its instances' folders with their
//! parameters. Text is escaped once, in [`esc`]; tables render through one [`HtmlTable`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use base64::Engine as _;

use super::group::{group, mean_std, FractionKey};
use super::markdown::published;
use super::{EvalResult, PretrainSummary};

pub const REPORT_HTML: &str = "report.html";

/// Where an instance's artifact is and what it was made with.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceLink {
    /// The artifact folder, relative to the page (`../../classify/<key>/` in a local store).
    pub href: String,
    /// Its parameters as `name = value` (values spelled as in a manifest).
    pub params: Vec<(String, String)>,
}

/// Everything the page shows.
pub struct Page<'a> {
    pub results: &'a [EvalResult],
    pub runs: &'a [PretrainSummary],
    /// By instance name; an instance without one is shown unlinked.
    pub links: &'a BTreeMap<String, InstanceLink>,
    /// PNG files by name: each task's plot (`<file_stem>.png`) and the pre-training curves.
    pub images: &'a BTreeMap<String, Vec<u8>>,
    /// The pre-training curves in the order of `runs` (keys of `images`).
    pub curves: &'a [String],
    /// Tables of other groupings, after the task tables (and in the navigation).
    pub extra: &'a [HtmlTable],
}

/// A table of the page, whatever grouping made it: a corner label and column headers, then rows
/// of a label and cells. Every table of results renders through this one type: the task tables
/// here ([`task_tables`]), and any other grouping through [`Page::extra`].
pub struct HtmlTable {
    /// The section's anchor (unique on the page).
    pub id: String,
    pub title: String,
    pub corner: String,
    pub columns: Vec<String>,
    pub rows: Vec<(String, Vec<Option<HtmlCell>>)>,
    /// The plot drawn from the same table (a key of [`Page::images`]).
    pub figure: Option<String>,
}

/// One cell: its value as shown, the published number, and the instances behind it.
pub struct HtmlCell {
    /// In bold (`81.0`).
    pub value: String,
    /// After it, muted (`± 1.4 n=2`).
    pub detail: String,
    /// The original's number for this cell, in %.
    pub published: Option<f64>,
    /// (instance, link text) of each run in the cell (`seed 0`).
    pub runs: Vec<(String, String)>,
}

impl HtmlCell {
    /// Mean ± sample std over the results of a cell, in %, each result a run.
    fn stats(results: &[&EvalResult], published: Option<f64>) -> Self {
        let values: Vec<f64> = results.iter().map(|r| r.test[&r.metric]).collect();
        let (mean, std) = mean_std(&values);
        let mut runs: Vec<&&EvalResult> = results.iter().collect();
        runs.sort_by(|a, b| (a.seed, &a.instance).cmp(&(b.seed, &b.instance)));
        HtmlCell {
            value: format!("{:.1}", mean * 100.0),
            detail: format!("± {:.1} n={}", std * 100.0, values.len()),
            published,
            runs: runs
                .into_iter()
                .map(|r| (r.instance.clone(), format!("seed {}", r.seed)))
                .collect(),
        }
    }
}

/// The results tables of `results.md`, from the same grouping (`group`), whatever rows it makes.
///
/// `group` places a result by its labels (task, row, backbone, fraction), never by its value, so
/// grouping copies whose metric value is the result's index puts each index in the cells where
/// `group` puts that result: the page gets the markdown's cells with the results behind them.
pub(super) fn task_tables(results: &[EvalResult]) -> Vec<HtmlTable> {
    let tagged: Vec<EvalResult> = results
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut t = r.clone();
            if let Some(v) = t.test.get_mut(&r.metric) {
                *v = i as f64;
            }
            t
        })
        .collect();
    group(&tagged)
        .into_iter()
        .map(|(task, cells)| {
            let cols: BTreeSet<(String, FractionKey)> =
                cells.values().flat_map(|m| m.keys().cloned()).collect();
            let rows = cells
                .iter()
                .map(|(row, m)| {
                    let cells = cols
                        .iter()
                        .map(|col| {
                            let of_cell: Vec<&EvalResult> =
                                m.get(col)?.iter().map(|&i| &results[i as usize]).collect();
                            let (d, t, m) = (&task.dataset, &task.task, &task.metric);
                            let p = published(d, t, m, row, &col.0, col.1.value());
                            Some(HtmlCell::stats(&of_cell, p))
                        })
                        .collect();
                    (row.clone(), cells)
                })
                .collect();
            HtmlTable {
                id: task.file_stem(),
                title: task.title(),
                corner: "text encoder".into(),
                columns: cols
                    .iter()
                    .map(|(vision, f)| format!("{vision} {}", f.label()))
                    .collect(),
                rows,
                figure: Some(format!("{}.png", task.file_stem())),
            }
        })
        .collect()
}

/// Escapes text for HTML element content and quoted attribute values.
pub(super) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "
body { font: 15px/1.45 system-ui, -apple-system, 'Segoe UI', 'DejaVu Sans', sans-serif; color: #1d2330;
  max-width: 1200px; margin: 0 auto; padding: 1.5rem 2rem 4rem; background: #fff; }
h1 { font-size: 1.7rem; margin: 0 0 .3rem; } h2 { font-size: 1.25rem; margin: 2.2rem 0 .6rem;
  padding-bottom: .2rem; border-bottom: 1px solid #d8dce5; }
p.lead { color: #4a5163; max-width: 60rem; }
nav { display: flex; flex-wrap: wrap; gap: .2rem 1.2rem; margin: .8rem 0 1rem; font-size: .92rem; }
a { color: #1f5fbf; text-decoration: none; }
.task { display: flex; flex-wrap: wrap; gap: 0 2rem; align-items: flex-start; }
.task table { flex: 0 0 auto; } .task figure { flex: 1 1 380px; max-width: 600px; }
a:hover { text-decoration: underline; }
table { border-collapse: collapse; margin: .4rem 0 1rem; font-size: .9rem; }
th, td { border: 1px solid #d8dce5; padding: .35rem .6rem; vertical-align: top; text-align: left; }
thead th { background: #eef1f6; } tbody th { background: #f7f8fb; font-weight: 600; white-space: nowrap; }
td.cell { text-align: right; white-space: nowrap; } td.empty { text-align: center; color: #9aa1b0; }
.v { font-weight: 600; font-variant-numeric: tabular-nums; } .sd { color: #5b6275; } .pub { display: inline-block; margin-left: .35rem; padding: 0 .35rem;
  border-radius: .3rem; background: #fff3d6; color: #7a5300; font-size: .8rem; }
.runs { display: block; font-size: .78rem; } .runs a { margin-left: .3rem; }
figure { margin: .4rem 0 1.5rem; max-width: 900px; }
figure img { max-width: 100%; height: auto; border: 1px solid #e3e6ee; }
figcaption { font-size: .85rem; color: #5b6275; }
details summary { cursor: pointer; color: #1f5fbf; font-size: .8rem; }
dl.params { display: grid; grid-template-columns: auto 1fr; gap: 0 .8rem; margin: .3rem 0; font-size: .8rem; }
dl.params dt { font-family: ui-monospace, 'DejaVu Sans Mono', monospace; color: #5b6275; }
dl.params dd { margin: 0; font-family: ui-monospace, 'DejaVu Sans Mono', monospace; }
code { font-family: ui-monospace, 'DejaVu Sans Mono', monospace; font-size: .85em; }
";

/// The whole page.
pub fn html(page: &Page) -> String {
    let own = task_tables(page.results);
    let tables: Vec<&HtmlTable> = own.iter().chain(page.extra).collect();
    let mut h =
        String::from("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    h.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    h.push_str("<title>Results — adaptor report</title>\n<style>");
    h.push_str(STYLE);
    h.push_str("</style>\n</head>\n<body>\n<h1>Results</h1>\n");
    let _ = writeln!(
        h,
        "<p class=\"lead\">{} evaluation(s), {} pre-training run(s). Test split, metrics in %; \
         cells are mean ± sample std over seeds (n = seeds). Models are selected on the valid \
         split; the test metric is read at the selected epoch, never the best over epochs. \
         <span class=\"pub\">pub.</span> marks the original's published number for the same text \
         encoder, vision backbone and fraction (reference F.1: single seed, the maximum over the \
         logged test history). Each cell links to the artifact folder of every run in it (by \
         seed); hover a link for the instance's parameters.</p>",
        page.results.len(),
        page.runs.len()
    );
    h.push_str("<nav>");
    for t in &tables {
        let _ = write!(h, "<a href=\"#{}\">{}</a>", esc(&t.id), esc(&t.title));
    }
    if !page.runs.is_empty() {
        h.push_str("<a href=\"#pretraining\">Pre-training</a>");
    }
    h.push_str("<a href=\"#all-metrics\">All test metrics</a></nav>\n");
    for t in tables {
        table_section(&mut h, t, page);
    }
    pretraining_section(&mut h, page);
    all_metrics_section(&mut h, page);
    h.push_str("</body>\n</html>\n");
    h
}

/// One grouped table, its plot below it.
fn table_section(h: &mut String, t: &HtmlTable, page: &Page) {
    let _ = writeln!(
        h,
        "<section id=\"{}\">\n<h2>{}</h2>\n<div class=\"task\">",
        esc(&t.id),
        esc(&t.title)
    );
    let _ = write!(
        h,
        "<table class=\"results\">\n<thead><tr><th>{}</th>",
        esc(&t.corner)
    );
    for c in &t.columns {
        let _ = write!(h, "<th>{}</th>", esc(c));
    }
    h.push_str("</tr></thead>\n<tbody>\n");
    for (label, cells) in &t.rows {
        let _ = write!(h, "<tr><th scope=\"row\">{}</th>", esc(label));
        for cell in cells {
            match cell {
                None => h.push_str("<td class=\"empty\">–</td>"),
                Some(c) => cell_html(h, c, page),
            }
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</tbody>\n</table>\n");
    if let Some(f) = &t.figure {
        figure(h, page, f, &t.title);
    }
    h.push_str("</div>\n</section>\n");
}

fn cell_html(h: &mut String, c: &HtmlCell, page: &Page) {
    let _ = write!(
        h,
        "<td class=\"cell\"><span class=\"v\">{}</span> <span class=\"sd\">{}</span>",
        esc(&c.value),
        esc(&c.detail)
    );
    if let Some(p) = c.published {
        let _ = write!(
            h,
            "<span class=\"pub\" title=\"the original's published number\">pub. {p:.1}</span>"
        );
    }
    h.push_str("<span class=\"runs\">");
    for (instance, text) in &c.runs {
        instance_link(h, page, instance, text);
    }
    h.push_str("</span></td>");
}

/// A link to an instance's folder, its parameters in the tooltip; plain text without a link.
fn instance_link(h: &mut String, page: &Page, instance: &str, text: &str) {
    match page.links.get(instance) {
        Some(l) => {
            let mut tip = instance.to_string();
            for (k, v) in &l.params {
                let _ = write!(tip, "\n{k} = {v}");
            }
            let _ = write!(
                h,
                "<a href=\"{}\" title=\"{}\">{}</a>",
                esc(&l.href),
                esc(&tip),
                esc(text)
            );
        }
        None => {
            let _ = write!(h, "<span title=\"{}\">{}</span>", esc(instance), esc(text));
        }
    }
}

/// A PNG of `page.images` as a `data:` URI; nothing when the file is not there.
fn figure(h: &mut String, page: &Page, name: &str, caption: &str) {
    let Some(png) = page.images.get(name) else {
        return;
    };
    let size = png_size(png)
        .map(|(w, ht)| format!(" width=\"{w}\" height=\"{ht}\""))
        .unwrap_or_default();
    let _ = writeln!(
        h,
        "<figure><img src=\"data:image/png;base64,{}\" alt=\"{}\"{size}>\
         <figcaption>{} ({})</figcaption></figure>",
        base64::engine::general_purpose::STANDARD.encode(png),
        esc(caption),
        esc(caption),
        esc(name)
    );
}

/// Width and height from a PNG's IHDR chunk.
fn png_size(png: &[u8]) -> Option<(u32, u32)> {
    if png.len() < 24 || &png[..8] != b"\x89PNG\r\n\x1a\n" || &png[12..16] != b"IHDR" {
        return None;
    }
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    Some((be(&png[16..20]), be(&png[20..24])))
}

fn pretraining_section(h: &mut String, page: &Page) {
    if page.runs.is_empty() {
        return;
    }
    h.push_str(
        "<section id=\"pretraining\">\n<h2>Pre-training</h2>\n<p>Valid split; recall at the kept \
         checkpoint (lowest valid loss), in %; chance is 1/pairs.</p>\n<table>\n<thead><tr>\
         <th>instance</th><th>variant</th><th>vision</th><th>text</th><th>parameters</th>\
         <th>epochs</th><th>valid loss (start → best)</th><th>R@1/5/10 image→text</th>\
         <th>R@1/5/10 text→image</th><th>chance R@1</th></tr></thead>\n<tbody>\n",
    );
    for r in page.runs {
        h.push_str("<tr><td>");
        instance_link(h, page, &r.instance, &r.instance);
        h.push_str("</td>");
        for c in r.row_cells() {
            let _ = write!(h, "<td>{}</td>", esc(&c));
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</tbody>\n</table>\n");
    for (r, c) in page.runs.iter().zip(page.curves) {
        figure(h, page, c, &format!("training curve of {}", r.instance));
    }
    h.push_str("</section>\n");
}

/// Every metric of every evaluation, each instance linked, its parameters in a details block.
fn all_metrics_section(h: &mut String, page: &Page) {
    h.push_str(
        "<section id=\"all-metrics\">\n<h2>All test metrics</h2>\n<p>Metrics in %, the loss as \
         computed.</p>\n<table>\n<thead><tr><th>instance</th><th>adaptor</th><th>fraction</th>\
         <th>seed</th><th>best epoch</th><th>train examples</th><th>metrics</th></tr></thead>\n\
         <tbody>\n",
    );
    let mut sorted: Vec<&EvalResult> = page.results.iter().collect();
    sorted.sort_by(|a, b| a.instance.cmp(&b.instance));
    for r in sorted {
        let metrics = r.test_metrics_text();
        h.push_str("<tr><td>");
        instance_link(h, page, &r.instance, &r.instance);
        if let Some(l) = page.links.get(&r.instance).filter(|l| !l.params.is_empty()) {
            h.push_str("<details><summary>parameters</summary><dl class=\"params\">");
            for (k, v) in &l.params {
                let _ = write!(h, "<dt>{}</dt><dd>{}</dd>", esc(k), esc(v));
            }
            h.push_str("</dl></details>");
        }
        let _ = writeln!(
            h,
            "</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&r.adaptor),
            FractionKey::of(r.fraction).label(),
            r.seed,
            r.best_epoch,
            r.train_examples,
            esc(&metrics)
        );
    }
    h.push_str("</tbody>\n</table>\n</section>\n");
}
