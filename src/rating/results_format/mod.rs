//! Rendering the results as text: an aligned table, Markdown, CSV and JSON. Each task's automatic check
//! ("auto: exact answer") is its own block or columns, never folded into the human mean.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use super::RatingError;
use super::auto::{AutoCheck, LABEL, Tally};
use super::results::{Cell, TaskResults};

/// Each run's last training loss, keyed by (task, model).
pub type Losses = BTreeMap<(String, String), f64>;

/// Output formats of `qlab results`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Markdown,
    Csv,
    Json,
}

/// The short text of a cell: `4.97` plus `(+3.23)` against base and `!` when it falls after e1.
pub fn cell_text(cell: Option<&Cell>) -> String {
    let Some(c) = cell else { return "-".into() };
    let mut s = format!("{:.2}", c.mean);
    if let Some(d) = c.change_from_base {
        let _ = write!(s, " ({d:+.2})");
    }
    if c.falls_after_e1 {
        s.push_str(" !");
    }
    s
}

/// The short text of a checked cell: `7/10`, or `-` where no answer was checked.
pub fn auto_text(tally: Option<Tally>) -> String {
    tally.map_or("-".into(), Tally::text)
}

/// A tally's Wilson 95% interval as `0.40-0.89`, or `-`.
pub fn auto_ci_text(tally: Option<Tally>) -> String {
    tally
        .and_then(Tally::ci95)
        .map_or("-".into(), |(lo, hi)| format!("{lo:.2}-{hi:.2}"))
}

/// The line that heads a task's automatic check, or says why it has none.
pub fn auto_heading(check: &AutoCheck) -> String {
    match check {
        AutoCheck::Checked(_) => {
            format!("{LABEL} (final number as in the reference: correct/checked, Wilson 95% CI)")
        }
        AutoCheck::Unchecked(why) => match why.reason() {
            Some(reason) => format!("auto: {why} ({reason})"),
            None => format!("auto: {why}"),
        },
    }
}

fn grid(t: &TaskResults) -> (Vec<String>, Vec<Vec<String>>) {
    let mut header = vec!["model".to_owned()];
    header.extend(t.stages.iter().cloned());
    let rows = t
        .models
        .iter()
        .map(|m| {
            let mut row = vec![m.clone()];
            row.extend(t.stages.iter().map(|s| cell_text(t.cell(m, s))));
            row
        })
        .collect();
    (header, rows)
}

fn agreement_lines(t: &TaskResults) -> Vec<String> {
    let Some(a) = &t.agreement else {
        return Vec::new();
    };
    let fmt = |x: Option<f64>| x.map_or("undefined".to_owned(), |v| format!("{v:.3}"));
    let mut out = vec![format!(
        "Krippendorff's alpha (ordinal), overall: {}",
        fmt(a.overall)
    )];
    out.extend(
        a.criteria
            .iter()
            .map(|(c, x)| format!("  {c}: {}", fmt(*x))),
    );
    out.extend(
        a.raters
            .iter()
            .map(|(r, m, n)| format!("rater {r}: mean {m:.2} over {n} values")),
    );
    out
}

/// Render every task's table in the chosen format.
pub fn render(tasks: &[TaskResults], format: Format) -> Result<String, RatingError> {
    match format {
        Format::Table => Ok(render_table(tasks, &Losses::new())),
        Format::Markdown => Ok(tasks.iter().map(markdown).collect::<Vec<_>>().join("\n")),
        Format::Csv => csv(tasks),
        Format::Json => {
            let rows: Vec<JsonRow<'_>> = tasks.iter().flat_map(json_rows).collect();
            let mut s = serde_json::to_string_pretty(&rows)
                .map_err(|e| RatingError::Encode(e.to_string()))?;
            s.push('\n');
            Ok(s)
        }
    }
}

/// One JSON row: a rated cell's fields as before, plus `auto`. Rows of cells that are checked but not
/// yet rated follow each task's rated ones, with `mean` null and `n` 0.
#[derive(Serialize)]
struct JsonRow<'a> {
    task: &'a str,
    model: &'a str,
    stage: &'a str,
    mean: Option<f64>,
    n: usize,
    criteria: BTreeMap<&'a str, f64>,
    /// `{"mean": fraction correct 0-1, "n": answers checked}`; null where the task has no check or the
    /// cell no checked answer.
    auto: Option<JsonAuto>,
}

#[derive(Serialize)]
struct JsonAuto {
    mean: f64,
    n: usize,
}

fn json_rows(t: &TaskResults) -> Vec<JsonRow<'_>> {
    let auto = |m: &str, s: &str| {
        let tally = t.auto_cell(m, s)?;
        Some(JsonAuto {
            mean: tally.fraction()?,
            n: tally.n,
        })
    };
    let rated = t.cells.iter().map(|c| JsonRow {
        task: &t.task,
        model: &c.model,
        stage: &c.stage,
        mean: Some(c.mean),
        n: c.n,
        criteria: c.criteria.iter().map(|(k, v)| (k.as_str(), *v)).collect(),
        auto: auto(&c.model, &c.stage),
    });
    let checked_only = t
        .auto
        .cells()
        .iter()
        .filter(|a| t.cell(&a.model, &a.stage).is_none());
    rated
        .chain(checked_only.map(|a| JsonRow {
            task: &t.task,
            model: &a.model,
            stage: &a.stage,
            mean: None,
            n: 0,
            criteria: BTreeMap::new(),
            auto: auto(&a.model, &a.stage),
        }))
        .collect()
}

/// The text table of every task: under each model's row its cells' bootstrap 95% intervals, and a
/// `loss` column when any of the task's runs has logged a loss.
pub fn render_table(tasks: &[TaskResults], losses: &Losses) -> String {
    tasks
        .iter()
        .map(|t| table(t, losses))
        .collect::<Vec<_>>()
        .join("\n")
}

fn table(t: &TaskResults, losses: &Losses) -> String {
    let (mut header, scores) = grid(t);
    let loss_of = |m: &str| losses.get(&(t.task.clone(), m.to_owned()));
    let has_loss = t.models.iter().any(|m| loss_of(m).is_some());
    if has_loss {
        header.push("loss".into());
    }
    let mut rows: Vec<Vec<String>> = Vec::new();
    let rated = !t.cells.is_empty();
    for (m, mut row) in t.models.iter().zip(scores).filter(|_| rated) {
        if has_loss {
            row.push(loss_of(m).map_or("-".into(), |l| format!("{l:.3}")));
        }
        rows.push(row);
        let mut ci = vec!["  95% CI".to_owned()];
        ci.extend(t.stages.iter().map(|s| {
            t.cell(m, s)
                .and_then(|c| c.ci95)
                .map_or("-".into(), |(lo, hi)| format!("{lo:.2}-{hi:.2}"))
        }));
        rows.push(ci);
    }
    let mut auto_rows: Vec<Vec<String>> = Vec::new();
    if matches!(t.auto, AutoCheck::Checked(_)) {
        for m in &t.models {
            let mut row = vec![m.clone()];
            row.extend(t.stages.iter().map(|s| auto_text(t.auto_cell(m, s))));
            auto_rows.push(row);
            let mut ci = vec!["  95% CI".to_owned()];
            ci.extend(t.stages.iter().map(|s| auto_ci_text(t.auto_cell(m, s))));
            auto_rows.push(ci);
        }
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .chain(&auto_rows)
                .filter_map(|r| r.get(i).map(String::len))
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |r: &[String]| {
        let cols: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<width$}", width = *w))
            .collect();
        cols.join("  ").trim_end().to_owned()
    };
    let mut out = format!("task {}\n{}\n", t.task, line(&header));
    if !rated {
        out.push_str("no ratings yet\n");
    }
    for r in &rows {
        out.push_str(&line(r));
        out.push('\n');
    }
    out.push_str(&auto_heading(&t.auto));
    out.push('\n');
    for r in &auto_rows {
        out.push_str(&line(r));
        out.push('\n');
    }
    for l in agreement_lines(t) {
        out.push_str(&l);
        out.push('\n');
    }
    out
}

fn markdown(t: &TaskResults) -> String {
    let (header, rows) = grid(t);
    let table_head = format!(
        "| {} |\n|{}\n",
        header.join(" | "),
        "---|".repeat(header.len())
    );
    let mut out = format!("## {}\n\n", t.task);
    if t.cells.is_empty() {
        out.push_str("No ratings yet.\n");
    } else {
        out.push_str(&table_head);
        for r in &rows {
            out.push_str(&format!("| {} |\n", r.join(" | ")));
        }
    }
    out.push_str(&format!("\n{}\n", auto_heading(&t.auto)));
    if matches!(t.auto, AutoCheck::Checked(_)) {
        out.push('\n');
        out.push_str(&table_head);
        for m in &t.models {
            let cells: Vec<String> = t
                .stages
                .iter()
                .map(|s| {
                    let tally = t.auto_cell(m, s);
                    match tally.and_then(Tally::ci95) {
                        Some(_) => format!("{} ({})", auto_text(tally), auto_ci_text(tally)),
                        None => auto_text(tally),
                    }
                })
                .collect();
            out.push_str(&format!("| {m} | {} |\n", cells.join(" | ")));
        }
    }
    let agreement = agreement_lines(t);
    if !agreement.is_empty() {
        out.push('\n');
        for l in agreement {
            out.push_str(&format!("- {}\n", l.trim()));
        }
    }
    out
}

fn csv(tasks: &[TaskResults]) -> Result<String, RatingError> {
    let criteria: Vec<String> = {
        let mut seen: Vec<String> = Vec::new();
        for c in tasks
            .iter()
            .flat_map(|t| &t.cells)
            .flat_map(|c| c.criteria.keys())
        {
            if !seen.contains(c) {
                seen.push(c.clone());
            }
        }
        seen
    };
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header: Vec<String> = [
        "task",
        "model",
        "stage",
        "mean",
        "n",
        "ci_low",
        "ci_high",
        "change_from_base",
        "falls_after_e1",
    ]
    .map(String::from)
    .to_vec();
    header.extend(criteria.iter().cloned());
    // The automatic check comes last, so that the columns before it keep their places.
    header.extend(
        [
            "auto_check",
            "auto_mean",
            "auto_n",
            "auto_ci_low",
            "auto_ci_high",
        ]
        .map(String::from),
    );
    let err = |e: csv::Error| RatingError::Encode(e.to_string());
    w.write_record(&header).map_err(err)?;
    let opt = |x: Option<f64>| x.map(|v| format!("{v:.4}")).unwrap_or_default();
    for t in tasks {
        let check = match &t.auto {
            AutoCheck::Checked(_) => "exact answer".to_owned(),
            AutoCheck::Unchecked(why) => why.to_string(),
        };
        for (m, s) in t.cells_in_order() {
            let mut rec = vec![t.task.clone(), m.clone(), s.clone()];
            match t.cell(m, s) {
                Some(c) => {
                    rec.extend([
                        format!("{:.4}", c.mean),
                        c.n.to_string(),
                        opt(c.ci95.map(|x| x.0)),
                        opt(c.ci95.map(|x| x.1)),
                        opt(c.change_from_base),
                        c.falls_after_e1.to_string(),
                    ]);
                    rec.extend(criteria.iter().map(|k| opt(c.criteria.get(k).copied())));
                }
                None => {
                    rec.extend(["", "0", "", "", "", ""].map(String::from));
                    rec.extend(criteria.iter().map(|_| String::new()));
                }
            }
            let tally = t.auto_cell(m, s);
            rec.extend([
                check.clone(),
                opt(tally.and_then(Tally::fraction)),
                tally.map(|x| x.n.to_string()).unwrap_or_default(),
                opt(tally.and_then(Tally::ci95).map(|x| x.0)),
                opt(tally.and_then(Tally::ci95).map(|x| x.1)),
            ]);
            w.write_record(&rec).map_err(err)?;
        }
    }
    let bytes = w
        .into_inner()
        .map_err(|e| RatingError::Encode(e.to_string()))?;
    String::from_utf8(bytes).map_err(|e| RatingError::Encode(e.to_string()))
}

#[cfg(test)]
mod tests;
