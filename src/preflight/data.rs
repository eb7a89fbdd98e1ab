//! A dataset before training: its question set parses and has the eval prompt's fields, its file reads,
//! it has the template's fields (one error at the template, not one per row), and no row would stop
//! training later.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use super::Findings;
use crate::config::template::Template as PromptTemplate;
use crate::config::{Config, DatasetSection, OnBadRow, check_id};
use crate::eval::QuestionSet;
use crate::eval::prompts::eval_template_source;
use crate::sweep::from_plan::dataset_spec;
use crate::train::data::read::{Cell, read_records};
use crate::train::data::template::Template;

/// Bad rows named in one error; the rest are counted.
const ROWS_SHOWN: usize = 5;

pub(super) fn check(config: &Config, i: usize, d: &DatasetSection, found: &mut Findings) {
    questions(config, i, d, found);
    rows(config, i, d, found);
}

fn questions(config: &Config, i: usize, d: &DatasetSection, found: &mut Findings) {
    let Some(q) = &d.questions else { return };
    let path = config.resolve_path(q);
    if !path.exists() {
        return;
    }
    let set = match QuestionSet::load(&path) {
        Ok(set) => set,
        Err(errors) => {
            found.errors.extend(errors.0);
            return;
        }
    };
    if let Some(msg) = check_id(&set.id) {
        found.error(config.diagnostic(
            &format!("dataset.{i}.questions"),
            format!(
                "{}: the question set's {msg} (it names answer files)",
                path.display()
            ),
        ));
    }
    if config.cells().iter().all(|(m, cell_d)| {
        cell_d.id != d.id
            || config.cell_settings(&m.id, &d.id).eval.prompt
                != crate::config::PromptStyle::Template
    }) {
        return;
    }
    let Ok(template) = PromptTemplate::parse(&eval_template_source(d)) else {
        return;
    };
    let key = if d.eval_template.is_some() {
        format!("dataset.{i}.eval_template")
    } else {
        format!("dataset.{i}.template")
    };
    for field in template.fields() {
        let lacking: Vec<&str> = set
            .questions
            .iter()
            .filter(|q| q.field(&field).is_none())
            .map(|q| q.id.as_str())
            .collect();
        if !lacking.is_empty() {
            found.error(config.diagnostic(
                &key,
                format!(
                    "dataset `{}`: the eval prompt uses `{{{field}}}`, which {} of the {} questions in {} lack \
                     (first: `{}`); a question has `question`, or `instruction` and `input`",
                    d.id,
                    lacking.len(),
                    set.questions.len(),
                    path.display(),
                    lacking[0]
                ),
            ));
        }
    }
}

fn rows(config: &Config, i: usize, d: &DatasetSection, found: &mut Findings) {
    let spec = dataset_spec(d, config);
    if !spec.path.exists() {
        return;
    }
    let Ok(template) = Template::parse(
        &spec.template,
        spec.completion_marker.as_deref(),
        &spec.fields,
    ) else {
        return;
    };
    let skip = spec.on_bad_row == OnBadRow::Skip;
    let read = match read_records(&spec.path, spec.format, spec.limit, true) {
        Ok(r) => r,
        Err(e) => {
            found.error(config.diagnostic(
                &format!("dataset.{i}.path"),
                format!("dataset `{}`: {e}", d.id),
            ));
            return;
        }
    };
    let columns: BTreeSet<&str> = read
        .rows
        .iter()
        .flat_map(|r| r.cells.keys().map(String::as_str))
        .collect();
    let mut absent = false;
    let fields = PromptTemplate::parse(&d.template)
        .map(|t| t.fields())
        .unwrap_or_default();
    for field in &fields {
        let column = d.fields.get(field).unwrap_or(field);
        let filled = read
            .rows
            .iter()
            .any(|r| matches!(r.cells.get(column), Some(Cell::Text(_))));
        if !read.rows.is_empty() && !columns.contains(column.as_str()) {
            absent = true;
            let has: Vec<&str> = columns.iter().take(12).copied().collect();
            found.error(config.diagnostic(
                &format!("dataset.{i}.template"),
                format!(
                    "dataset `{}`: the template's `{{{field}}}` reads column `{column}`, which no row of {} has \
                     (its columns: {}); map it with `fields = {{ {field} = \"COLUMN\" }}`",
                    d.id,
                    spec.path.display(),
                    has.join(", ")
                ),
            ));
        } else if !read.rows.is_empty() && !filled {
            absent = true;
            found.error(config.diagnostic(
                &format!("dataset.{i}.template"),
                format!(
                    "dataset `{}`: the template's `{{{field}}}` reads column `{column}`, which holds no text in any row of {}",
                    d.id,
                    spec.path.display()
                ),
            ));
        }
    }
    if absent {
        return;
    }
    let rendered = read
        .rows
        .iter()
        .filter(|r| template.render(r).is_ok())
        .count();
    let mut bad: Vec<(usize, String)> = read
        .rows
        .iter()
        .filter_map(|r| template.render(r).err())
        .map(|b| (b.row, b.reason))
        .chain(read.malformed)
        .collect();
    bad.sort_by_key(|(row, _)| *row);
    if rendered == 0 && bad.is_empty() {
        found.error(config.diagnostic(
            &format!("dataset.{i}.path"),
            format!("dataset `{}`: {} has no rows", d.id, spec.path.display()),
        ));
        return;
    }
    if bad.is_empty() || (skip && rendered > 0) {
        return;
    }
    let mut msg = if skip {
        format!(
            "dataset `{}`: every row of {} is bad ({}):",
            d.id,
            spec.path.display(),
            bad.len()
        )
    } else {
        format!(
            "dataset `{}`: {} bad row(s) in {} would stop training (set on_bad_row = \"skip\" to skip them):",
            d.id,
            bad.len(),
            spec.path.display()
        )
    };
    for (row, why) in bad.iter().take(ROWS_SHOWN) {
        let _ = write!(msg, " row {row}: {why};");
    }
    if bad.len() > ROWS_SHOWN {
        let _ = write!(msg, " and {} more", bad.len() - ROWS_SHOWN);
    }
    found.error(config.diagnostic(
        &format!("dataset.{i}.path"),
        msg.trim_end_matches(';').to_owned(),
    ));
}
