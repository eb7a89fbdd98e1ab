//! Exports of the ratings: an xlsx workbook in the study's layout (its Summary with the automatic check
//! beside the human scores), and a CSV of every judgement.

use std::collections::BTreeMap;
use std::path::Path;

use rust_xlsxwriter::{Format, Workbook, Worksheet, XlsxError};

use super::RatingError;
use super::auto::AutoCheck;
use super::journal::AnswerKey;
use super::ratings::Ratings;
use super::results::{Cell, TaskResults, stage_order};
use super::rubric::Rubric;

/// One row of a task sheet: a model's answer at one stage, each criterion averaged over the raters.
#[derive(Debug, Clone, PartialEq)]
pub struct AnswerRow {
    pub file_name: String,
    pub question: String,
    pub values: Vec<Option<f64>>,
}

/// The name the study's sheets give an answer file: `<model>-<stage>-<task>`.
pub fn file_label(key: &AnswerKey) -> String {
    format!("{}-{}-{}", key.model, key.stage, key.item.task)
}

fn question_order(q: &str) -> (u64, String) {
    (q.parse().unwrap_or(u64::MAX), q.to_owned())
}

/// The rows of each task, in model order, then stage order, then question number.
pub fn answer_rows(
    ratings: &Ratings,
    rubric: &Rubric,
    model_order: &[String],
) -> BTreeMap<String, Vec<AnswerRow>> {
    let mut per_answer: BTreeMap<&AnswerKey, Vec<Vec<f64>>> = BTreeMap::new();
    for ((_, key), rec) in ratings.all_scores() {
        let values = per_answer
            .entry(key)
            .or_insert_with(|| vec![Vec::new(); rubric.criteria.len()]);
        for (i, c) in rubric.criteria.iter().enumerate() {
            if let Some(v) = rec.scores.get(c) {
                values[i].push(*v);
            }
        }
    }
    let model_rank = |m: &str| {
        model_order
            .iter()
            .position(|x| x == m)
            .unwrap_or(usize::MAX)
    };
    let mut keys: Vec<&AnswerKey> = per_answer.keys().copied().collect();
    keys.sort_by_key(|k| {
        (
            k.item.task.clone(),
            model_rank(&k.model),
            k.model.clone(),
            stage_order(&k.stage),
            question_order(&k.item.question),
        )
    });
    let mut out: BTreeMap<String, Vec<AnswerRow>> = BTreeMap::new();
    for k in keys {
        let values = per_answer[k]
            .iter()
            .map(|vs| super::stats::mean(vs))
            .collect();
        out.entry(k.item.task.clone()).or_default().push(AnswerRow {
            file_name: file_label(k),
            question: k.item.question.clone(),
            values,
        });
    }
    out
}

/// Write the workbook: one sheet per task (File Name | Question Number | one column per criterion)
/// and a `Summary` sheet with the results table.
pub fn write_xlsx(
    path: &Path,
    ratings: &Ratings,
    rubric: &Rubric,
    tasks: &[TaskResults],
    model_order: &[String],
) -> Result<(), RatingError> {
    let xlsx = |e: XlsxError| RatingError::Export {
        path: path.to_owned(),
        message: e.to_string(),
    };
    let mut book = Workbook::new();
    let bold = Format::new().set_bold();
    for (task, rows) in answer_rows(ratings, rubric, model_order) {
        let sheet = book
            .add_worksheet()
            .set_name(sheet_name(&task))
            .map_err(xlsx)?;
        let mut header = vec!["File Name".to_owned(), "Question Number".to_owned()];
        header.extend(rubric.criteria.iter().cloned());
        write_header(sheet, &header, &bold).map_err(xlsx)?;
        for (r, row) in rows.iter().enumerate() {
            let r = r as u32 + 1;
            sheet.write_string(r, 0, &row.file_name).map_err(xlsx)?;
            match row.question.parse::<f64>() {
                Ok(n) => sheet.write_number(r, 1, n),
                Err(_) => sheet.write_string(r, 1, &row.question),
            }
            .map_err(xlsx)?;
            for (c, v) in row.values.iter().enumerate() {
                if let Some(v) = v {
                    sheet.write_number(r, c as u16 + 2, *v).map_err(xlsx)?;
                }
            }
        }
    }
    let sheet = book.add_worksheet().set_name("Summary").map_err(xlsx)?;
    let mut header: Vec<String> = ["Task", "Model", "Stage", "Mean", "N"]
        .map(String::from)
        .to_vec();
    header.extend(rubric.criteria.iter().cloned());
    header.extend(["CI low", "CI high", "Change from base", "Falls after e1"].map(String::from));
    // The automatic check last, apart from the human columns; a row checked but not rated leaves those empty.
    header.extend(["Auto correct", "Auto n", "Auto CI low", "Auto CI high"].map(String::from));
    write_header(sheet, &header, &bold).map_err(xlsx)?;
    let mut r = 1u32;
    for t in tasks {
        for (m, s) in t.cells_in_order() {
            sheet.write_string(r, 0, &t.task).map_err(xlsx)?;
            sheet.write_string(r, 1, m).map_err(xlsx)?;
            sheet.write_string(r, 2, s).map_err(xlsx)?;
            let auto_col = 9 + rubric.criteria.len() as u16;
            if let Some(c) = t.cell(m, s) {
                write_human(sheet, r, c, rubric).map_err(xlsx)?;
            }
            write_auto(sheet, r, auto_col, t, m, s).map_err(xlsx)?;
            r += 1;
        }
    }
    let bytes = book.save_to_buffer().map_err(xlsx)?;
    crate::store::atomic::write_atomic(path, &bytes)?;
    Ok(())
}

/// A rated cell's human columns: mean, n, one per criterion, interval, change from base, the e1 flag.
fn write_human(sheet: &mut Worksheet, r: u32, c: &Cell, rubric: &Rubric) -> Result<(), XlsxError> {
    sheet.write_number(r, 3, c.mean)?;
    sheet.write_number(r, 4, c.n as f64)?;
    let mut col = 5u16;
    for k in &rubric.criteria {
        if let Some(v) = c.criteria.get(k) {
            sheet.write_number(r, col, *v)?;
        }
        col += 1;
    }
    let extras = [c.ci95.map(|x| x.0), c.ci95.map(|x| x.1), c.change_from_base];
    for v in extras {
        if let Some(v) = v {
            sheet.write_number(r, col, v)?;
        }
        col += 1;
    }
    sheet.write_boolean(r, col, c.falls_after_e1)?;
    Ok(())
}

/// The automatic check's columns from `col`: fraction correct, answers checked, Wilson interval; for a
/// task without a check, why, in the first of them.
fn write_auto(
    sheet: &mut Worksheet,
    r: u32,
    col: u16,
    t: &TaskResults,
    model: &str,
    stage: &str,
) -> Result<(), XlsxError> {
    if let AutoCheck::Unchecked(why) = &t.auto {
        sheet.write_string(r, col, why.to_string())?;
        return Ok(());
    }
    let Some(tally) = t.auto_cell(model, stage) else {
        return Ok(());
    };
    let values = [
        tally.fraction(),
        Some(tally.n as f64),
        tally.ci95().map(|x| x.0),
        tally.ci95().map(|x| x.1),
    ];
    for (i, v) in values.into_iter().enumerate() {
        if let Some(v) = v {
            sheet.write_number(r, col + i as u16, v)?;
        }
    }
    Ok(())
}

fn write_header(sheet: &mut Worksheet, header: &[String], bold: &Format) -> Result<(), XlsxError> {
    for (i, h) in header.iter().enumerate() {
        sheet.write_string_with_format(0, i as u16, h, bold)?;
    }
    Ok(())
}

/// Excel sheet names: at most 31 characters, none of `[]:*?/\`.
fn sheet_name(task: &str) -> String {
    task.chars()
        .filter(|c| !"[]:*?/\\".contains(*c))
        .take(31)
        .collect()
}

/// Every standing judgement as CSV: rater, task, question set, question, model, stage, one column per
/// criterion, then the note and the reference flag of that question.
pub fn judgements_csv(ratings: &Ratings, rubric: &Rubric) -> Result<String, RatingError> {
    let err = |e: csv::Error| RatingError::Encode(e.to_string());
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header: Vec<String> = ["rater", "task", "questions", "question", "model", "stage"]
        .map(String::from)
        .to_vec();
    header.extend(rubric.criteria.iter().cloned());
    header.extend(["note", "reference_wrong"].map(String::from));
    w.write_record(&header).map_err(err)?;
    for ((rater, key), rec) in ratings.all_scores() {
        let mut row = vec![
            rater.clone(),
            key.item.task.clone(),
            key.item.questions.clone(),
            key.item.question.clone(),
            key.model.clone(),
            key.stage.clone(),
        ];
        row.extend(
            rubric
                .criteria
                .iter()
                .map(|c| rec.scores.get(c).map(|v| v.to_string()).unwrap_or_default()),
        );
        row.push(
            ratings
                .note(rater, &key.item, &key.model)
                .unwrap_or_default()
                .to_owned(),
        );
        row.push(ratings.reference_wrong(rater, &key.item).to_string());
        w.write_record(&row).map_err(err)?;
    }
    let bytes = w
        .into_inner()
        .map_err(|e| RatingError::Encode(e.to_string()))?;
    String::from_utf8(bytes).map_err(|e| RatingError::Encode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use calamine::{Data, Reader, Xlsx, open_workbook};

    use super::*;
    use crate::rating::journal::{JournalLine, test_score_line};
    use crate::rating::results::build;

    fn line(
        rater: &str,
        task: &str,
        model: &str,
        stage: &str,
        q: &str,
        v: [f64; 3],
    ) -> JournalLine {
        test_score_line(rater, task, model, stage, q, v)
    }

    fn ratings() -> Ratings {
        Ratings::replay(&[
            line("s", "math", "qwen-2-7b", "e1", "10", [1., 2., 3.]),
            line("s", "math", "qwen-2-7b", "e1", "2", [5., 4.5, 4.]),
            line("s", "math", "qwen-2-7b", "base", "2", [0., 0., 1.]),
            line("t", "math", "qwen-2-7b", "base", "2", [2., 2., 1.]),
            line("s", "bio", "gemma-7b", "e3", "1", [5., 5., 5.]),
        ])
    }

    #[test]
    fn xlsx_reads_back_with_the_studys_layout_and_a_summary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.xlsx");
        let (r, rubric) = (ratings(), Rubric::default());
        let tasks = build(&r, &rubric, &[]);
        write_xlsx(&path, &r, &rubric, &tasks, &[]).unwrap();
        let mut book: Xlsx<_> = open_workbook(&path).unwrap();
        assert_eq!(book.sheet_names(), ["bio", "math", "Summary"]);
        let math = book.worksheet_range("math").unwrap();
        let rows: Vec<Vec<Data>> = math.rows().map(|r| r.to_vec()).collect();
        let s = |x: &str| Data::String(x.into());
        assert_eq!(
            rows[0],
            [
                s("File Name"),
                s("Question Number"),
                s("Correct Answer"),
                s("Correct Reasoning"),
                s("Helpfulness")
            ]
        );
        let scored = |file: &str, values: [f64; 4]| {
            std::iter::once(s(file))
                .chain(values.map(Data::Float))
                .collect::<Vec<_>>()
        };
        assert_eq!(rows[1], scored("qwen-2-7b-base-math", [2., 1., 1., 1.]));
        assert_eq!(rows[2], scored("qwen-2-7b-e1-math", [2., 5., 4.5, 4.]));
        assert_eq!(rows[3][1], Data::Float(10.));
        assert_eq!(rows.len(), 4);
        let summary = book.worksheet_range("Summary").unwrap();
        let header: Vec<Data> = summary.rows().next().unwrap().to_vec();
        assert_eq!(
            header[..5],
            [s("Task"), s("Model"), s("Stage"), s("Mean"), s("N")]
        );
        let e1 = summary.rows().find(|r| r[2] == s("e1")).unwrap();
        assert_eq!(e1[3], Data::Float(19.5 / 6.0));
        assert_eq!(e1[4], Data::Float(2.));
        assert_eq!(
            e1[header
                .iter()
                .position(|h| *h == s("Change from base"))
                .unwrap()],
            Data::Float(19.5 / 6.0 - 1.0)
        );
    }

    #[test]
    fn the_summary_carries_the_automatic_check_apart_from_the_human_columns() {
        use crate::rating::auto::{AutoCell, AutoChecks, NoCheck};
        use crate::rating::results::build_with_checks;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.xlsx");
        let (r, rubric) = (ratings(), Rubric::default());
        let cell = |stage, correct| AutoCell::new("qwen-2-7b", stage, correct, 10);
        let checks = AutoChecks::from([
            (
                "math".to_string(),
                AutoCheck::Checked(vec![cell("base", 1), cell("e1", 7), cell("e3", 6)]),
            ),
            ("bio".to_string(), AutoCheck::Unchecked(NoCheck::NotNumeric)),
        ]);
        let tasks = build_with_checks(&r, &rubric, &[], &checks);
        write_xlsx(&path, &r, &rubric, &tasks, &[]).unwrap();
        let mut book: Xlsx<_> = open_workbook(&path).unwrap();
        let summary = book.worksheet_range("Summary").unwrap();
        let rows: Vec<Vec<Data>> = summary.rows().map(|r| r.to_vec()).collect();
        let s = |x: &str| Data::String(x.into());
        let col = |name: &str| rows[0].iter().position(|h| *h == s(name)).unwrap();
        let row = |task: &str, stage: &str| {
            rows.iter()
                .find(|r| r[0] == s(task) && r[2] == s(stage))
                .unwrap()
        };
        assert_eq!(col("Auto correct"), col("Falls after e1") + 1);
        let e1 = row("math", "e1");
        assert_eq!(
            e1[col("Mean")],
            Data::Float(19.5 / 6.0),
            "the human mean is untouched"
        );
        assert_eq!(e1[col("Auto correct")], Data::Float(0.7));
        assert_eq!(e1[col("Auto n")], Data::Float(10.0));
        let e3 = row("math", "e3");
        assert_eq!(e3[col("Mean")], Data::Empty, "checked, not rated");
        assert_eq!(e3[col("Auto correct")], Data::Float(0.6));
        assert_eq!(
            row("bio", "e3")[col("Auto correct")],
            s("no automatic check for this task")
        );
        assert_eq!(rows.len(), 1 + 4);
    }

    #[test]
    fn csv_lists_every_standing_judgement() {
        let text = judgements_csv(&ratings(), &Rubric::default()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 6);
        assert_eq!(
            lines[0],
            "rater,task,questions,question,model,stage,Correct Answer,Correct Reasoning,Helpfulness,note,reference_wrong"
        );
        assert!(
            lines.contains(&"s,math,math,2,qwen-2-7b,e1,5,4.5,4,,false"),
            "{text}"
        );
    }
}
