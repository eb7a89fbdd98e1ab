//! Parsing one raw benchmark file of the study: `Question: N`, `Generated Response:`, the decoded prompt
//! and answer, then one `Criterion:value` line per rubric criterion, then a rule of underscores.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::rating::rubric::Rubric;

/// One answer of the study with its hand scores.
#[derive(Debug, Clone, PartialEq)]
pub struct StudyAnswer {
    pub question: String,
    /// Line of the `Question: N` header (1-based).
    pub line: usize,
    /// The decoded prompt, up to and including `### Response:` (empty when the file has no such marker).
    pub prompt: String,
    pub answer: String,
    /// Scores that are numbers inside the rubric's range.
    pub scores: BTreeMap<String, f64>,
    /// The raw text of score cells that were not kept (malformed, out of range, blank).
    pub unparsed: BTreeMap<String, String>,
}

/// A score cell that was reported and left unrated.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreProblem {
    pub file: PathBuf,
    pub line: usize,
    pub question: String,
    pub criterion: String,
    pub raw: String,
    pub why: &'static str,
}

impl fmt::Display for ScoreProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: question {}, {}: {:?} {}; left unrated",
            self.file.display(),
            self.line,
            self.question,
            self.criterion,
            self.raw,
            self.why
        )
    }
}

/// A structural error: the file is not in the study's layout.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct LayoutError {
    pub file: PathBuf,
    pub line: usize,
    pub message: String,
}

const RESPONSE_MARK: &str = "### Response:";

/// Parse the text of one raw file. Score cells that are not numbers inside the rubric's range are
/// returned as problems (never guessed); a file without questions or a question without its score
/// lines is a layout error.
pub fn parse_benchmark(
    file: &Path,
    text: &str,
    rubric: &Rubric,
) -> Result<(Vec<StudyAnswer>, Vec<ScoreProblem>), LayoutError> {
    let lines: Vec<&str> = text
        .lines()
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect();
    let layout = |line: usize, message: String| LayoutError {
        file: file.to_owned(),
        line,
        message,
    };
    let starts: Vec<usize> = (0..lines.len())
        .filter(|&i| {
            lines[i].starts_with("Question:")
                && lines
                    .get(i + 1)
                    .is_some_and(|n| n.starts_with("Generated Response:"))
        })
        .collect();
    if starts.is_empty() {
        return Err(layout(
            1,
            "no `Question: N` followed by `Generated Response:` found".into(),
        ));
    }
    let mut answers = Vec::new();
    let mut problems = Vec::new();
    for (k, &start) in starts.iter().enumerate() {
        let end = starts.get(k + 1).copied().unwrap_or(lines.len());
        let question = lines[start]["Question:".len()..].trim().to_owned();
        let mut last = end;
        while last > start + 2 && is_filler(lines[last - 1]) {
            last -= 1;
        }
        let mut score_lines: Vec<(usize, &str, &str)> = Vec::new();
        while last > start + 2 {
            let Some((criterion, raw)) = score_cell(lines[last - 1], rubric) else {
                break;
            };
            score_lines.push((last - 1, criterion, raw));
            last -= 1;
        }
        score_lines.reverse();
        let named: Vec<&str> = score_lines.iter().map(|(_, c, _)| *c).collect();
        if named
            != rubric
                .criteria
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
        {
            let expected = rubric
                .criteria
                .iter()
                .map(|c| format!("{c}:"))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(layout(
                start + 1,
                format!(
                    "question {question}: expected the score lines {expected} after the answer"
                ),
            ));
        }
        let mut body: Vec<&str> = Vec::with_capacity(last - start);
        body.push(lines[start + 1]["Generated Response:".len()..].trim_start());
        body.extend(&lines[start + 2..last]);
        let full = body.join("\n");
        let (prompt, answer) = match full.find(RESPONSE_MARK) {
            Some(at) => (
                full[..at + RESPONSE_MARK.len()].trim().to_owned(),
                full[at + RESPONSE_MARK.len()..].trim().to_owned(),
            ),
            None => (String::new(), full.trim().to_owned()),
        };
        let mut scores = BTreeMap::new();
        let mut unparsed = BTreeMap::new();
        for (i, criterion, raw) in score_lines {
            let raw = raw.trim();
            let why = match raw.parse::<f64>() {
                _ if raw.is_empty() => Some("is blank"),
                Ok(v) if rubric.in_range(v) => {
                    scores.insert(criterion.to_owned(), v);
                    None
                }
                Ok(_) => Some("is outside the scale"),
                Err(_) => Some("is not a number"),
            };
            if let Some(why) = why {
                unparsed.insert(criterion.to_owned(), raw.to_owned());
                problems.push(ScoreProblem {
                    file: file.to_owned(),
                    line: i + 1,
                    question: question.clone(),
                    criterion: criterion.to_owned(),
                    raw: raw.to_owned(),
                    why,
                });
            }
        }
        answers.push(StudyAnswer {
            question,
            line: start + 1,
            prompt,
            answer,
            scores,
            unparsed,
        });
    }
    Ok((answers, problems))
}

/// Blank lines and the rule of underscores that ends an entry (a rule may hold a stray keystroke: the
/// study has one `5` typed into it below a blank cell; it is not read as a score).
fn is_filler(line: &str) -> bool {
    let t = line.trim();
    t.is_empty() || t.starts_with("___")
}

fn score_cell<'a>(line: &'a str, rubric: &'a Rubric) -> Option<(&'a str, &'a str)> {
    rubric.criteria.iter().find_map(|c| {
        line.strip_prefix(c.as_str())?
            .strip_prefix(':')
            .map(|raw| (c.as_str(), raw))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "Question: 1\nGenerated Response: \n You are an expert\n### Input:\nWhat is 2+2?\n\n### Response:\nIt is 4.\nCorrect Answer:5\nCorrect Reasoning:4.5\nHelpfulness:55\n___5___\n\n\nQuestion: 2\nGenerated Response: \nno marker here\nCorrect Answer:0\nCorrect Reasoning:\nHelpfulness:x\n";

    #[test]
    fn parses_answers_scores_and_reports_bad_cells_with_their_line() {
        let (answers, problems) =
            parse_benchmark(Path::new("f.txt"), SAMPLE, &Rubric::default()).unwrap();
        assert_eq!(answers.len(), 2);
        let a = &answers[0];
        assert_eq!((a.question.as_str(), a.line), ("1", 1));
        assert_eq!(
            a.prompt,
            "You are an expert\n### Input:\nWhat is 2+2?\n\n### Response:"
        );
        assert_eq!(a.answer, "It is 4.");
        assert_eq!(
            a.scores,
            BTreeMap::from([
                ("Correct Answer".into(), 5.0),
                ("Correct Reasoning".into(), 4.5)
            ])
        );
        assert_eq!(a.unparsed["Helpfulness"], "55");
        assert_eq!(answers[1].prompt, "");
        assert_eq!(answers[1].answer, "no marker here");
        let shown: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "f.txt:11: question 1, Helpfulness: \"55\" is outside the scale; left unrated",
                "f.txt:19: question 2, Correct Reasoning: \"\" is blank; left unrated",
                "f.txt:20: question 2, Helpfulness: \"x\" is not a number; left unrated",
            ]
        );
    }

    #[test]
    fn missing_score_lines_are_a_layout_error() {
        let text = "Question: 1\nGenerated Response: \nhi\nCorrect Answer:5\n";
        let err = parse_benchmark(Path::new("f.txt"), text, &Rubric::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("f.txt:1: question 1: expected the score lines"),
            "{err}"
        );
        let err = parse_benchmark(Path::new("g.txt"), "hello", &Rubric::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("g.txt:1"), "{err}");
    }
}
