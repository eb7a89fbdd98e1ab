//! Rendering the results as text: an aligned table, Markdown, CSV and JSON.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::RatingError;
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
            let cells: Vec<&Cell> = tasks.iter().flat_map(|t| &t.cells).collect();
            let mut s = serde_json::to_string_pretty(&cells)
                .map_err(|e| RatingError::Encode(e.to_string()))?;
            s.push('\n');
            Ok(s)
        }
    }
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
    for (m, mut row) in t.models.iter().zip(scores) {
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
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
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
    for r in &rows {
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
    let mut out = format!(
        "## {}\n\n| {} |\n|{}\n",
        t.task,
        header.join(" | "),
        "---|".repeat(header.len())
    );
    for r in &rows {
        out.push_str(&format!("| {} |\n", r.join(" | ")));
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
    let err = |e: csv::Error| RatingError::Encode(e.to_string());
    w.write_record(&header).map_err(err)?;
    let opt = |x: Option<f64>| x.map(|v| format!("{v:.4}")).unwrap_or_default();
    for t in tasks {
        for m in &t.models {
            for c in t.stages.iter().filter_map(|s| t.cell(m, s)) {
                let mut rec = vec![
                    c.task.clone(),
                    c.model.clone(),
                    c.stage.clone(),
                    format!("{:.4}", c.mean),
                    c.n.to_string(),
                    opt(c.ci95.map(|x| x.0)),
                    opt(c.ci95.map(|x| x.1)),
                    opt(c.change_from_base),
                    c.falls_after_e1.to_string(),
                ];
                rec.extend(criteria.iter().map(|k| opt(c.criteria.get(k).copied())));
                w.write_record(&rec).map_err(err)?;
            }
        }
    }
    let bytes = w
        .into_inner()
        .map_err(|e| RatingError::Encode(e.to_string()))?;
    String::from_utf8(bytes).map_err(|e| RatingError::Encode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rating::journal::test_score_line;
    use crate::rating::ratings::Ratings;
    use crate::rating::results::build;
    use crate::rating::rubric::Rubric;

    fn tasks() -> Vec<TaskResults> {
        let line = |rater: &str, stage: &str, q: u32, v: f64| {
            test_score_line(rater, "math", "m1", stage, &q.to_string(), [v; 3])
        };
        let mut lines = Vec::new();
        for q in 0..4 {
            lines.push(line("ann", "base", q, 1.0));
            lines.push(line("ann", "e1", q, 4.0));
            lines.push(line("ann", "e3", q, 3.0));
            lines.push(line("bob", "e3", q, f64::from(q)));
        }
        build(&Ratings::replay(&lines), &Rubric::default(), &[])
    }

    #[test]
    fn table_and_markdown_show_change_flag_and_agreement() {
        let t = render(&tasks(), Format::Table).unwrap();
        assert!(
            t.starts_with(
                "task math\n\
                 model     base       e1            e3\n\
                 m1        1.00       4.00 (+3.00)  2.25 (+1.25) !\n  \
                 95% CI  1.00-1.00  4.00-4.00     "
            ),
            "{t}"
        );
        assert!(!t.contains("loss"), "no loss column without losses: {t}");
        let losses = Losses::from([(("math".to_string(), "m1".to_string()), 0.4321)]);
        let with_loss = render_table(&tasks(), &losses);
        assert!(
            with_loss.contains("e3              loss\n")
                && with_loss.contains("2.25 (+1.25) !  0.432\n"),
            "{with_loss}"
        );
        assert!(
            t.contains("Krippendorff's alpha (ordinal), overall: ")
                && t.contains("rater bob: mean 1.50 over 12 values"),
            "{t}"
        );
        let md = render(&tasks(), Format::Markdown).unwrap();
        assert!(md.contains("| model | base | e1 | e3 |\n|---|---|---|---|\n| m1 | 1.00 | 4.00 (+3.00) | 2.25 (+1.25) ! |"), "{md}");
    }

    #[test]
    fn csv_and_json_carry_every_cell() {
        let csv = render(&tasks(), Format::Csv).unwrap();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].starts_with(
            "task,model,stage,mean,n,ci_low,ci_high,change_from_base,falls_after_e1,Correct Answer"
        ));
        assert!(lines[3].starts_with("math,m1,e3,2.2500,4,"), "{csv}");
        let json: serde_json::Value =
            serde_json::from_str(&render(&tasks(), Format::Json).unwrap()).unwrap();
        let e1 = &json[1];
        assert_eq!(e1["task"], "math");
        assert_eq!(e1["stage"], "e1");
        assert_eq!(e1["mean"], 4.0);
        assert_eq!(e1["n"], 4);
        assert_eq!(e1["criteria"]["Helpfulness"], 4.0);
        assert_eq!(e1.as_object().unwrap().len(), 6, "{e1}");
    }
}
