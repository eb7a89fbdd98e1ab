//! Reads the study's question lists (plain text, CRLF, section headers, numbered items) into a [`QuestionSet`].
//!
//! Two shapes exist. Math: `1Question` (or `4 Question`), the question's lines, `Answer`, the answer's lines,
//! a blank line. Bio: `1`, then `Instruction` / `Input` / `Output` each followed by its text (an `Input` may be
//! empty). Any other line outside an item is a section header that applies to the items after it.

use std::path::Path;

use super::questions::{Question, QuestionSet};

/// What went wrong in a study question file, with its place.
#[derive(Debug, thiserror::Error)]
pub enum StudyQuestionsError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Format {
        path: String,
        line: usize,
        message: String,
    },
    /// Not a text file, or far larger than a question list.
    #[error(transparent)]
    Store(crate::store::StoreError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Question,
    Answer,
    Instruction,
    Input,
    Output,
}

impl Part {
    fn from_marker(line: &str) -> Option<Part> {
        match line {
            "Question" => Some(Part::Question),
            "Answer" => Some(Part::Answer),
            "Instruction" => Some(Part::Instruction),
            "Input" => Some(Part::Input),
            "Output" => Some(Part::Output),
            _ => None,
        }
    }
}

#[derive(Default)]
struct Item {
    number: String,
    line: usize,
    section: Option<String>,
    parts: Vec<(Part, Vec<String>)>,
}

impl Item {
    fn text(&self, part: Part) -> Option<String> {
        self.parts
            .iter()
            .find(|(p, _)| *p == part)
            .map(|(_, lines)| lines.join("\n").trim().to_owned())
    }

    fn current(&self) -> Option<Part> {
        self.parts.last().map(|(p, _)| *p)
    }

    fn is_complete(&self) -> bool {
        matches!(self.current(), Some(Part::Answer | Part::Output))
            && self
                .parts
                .last()
                .is_some_and(|(_, l)| l.iter().any(|s| !s.trim().is_empty()))
    }
}

/// Read a study question file; `task` names the set (default: `math` or `bio` after the item shape).
pub fn import(path: &Path, task: Option<&str>) -> Result<QuestionSet, StudyQuestionsError> {
    let text = crate::store::bounded::read_to_string(
        path,
        crate::store::bounded::TEXT_FILE_LIMIT,
        "question list",
    )
    .map_err(|e| match e {
        crate::store::StoreError::Io { source, .. } => StudyQuestionsError::Read {
            path: path.display().to_string(),
            source,
        },
        other => StudyQuestionsError::Store(other),
    })?;
    parse(&path.display().to_string(), &text, task)
}

pub fn parse(
    path: &str,
    text: &str,
    task: Option<&str>,
) -> Result<QuestionSet, StudyQuestionsError> {
    let err = |line: usize, message: String| StudyQuestionsError::Format {
        path: path.to_owned(),
        line,
        message,
    };
    let mut items: Vec<Question> = Vec::new();
    let mut open: Option<Item> = None;
    let mut section: Option<String> = None;
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = raw.trim_end_matches('\r');
        let trimmed = line.trim();
        if let Some(number) = math_item_start(trimmed) {
            items.extend(open.take().map(|it| finish(it, &err)).transpose()?);
            open = Some(Item {
                number,
                line: line_no,
                section: section.clone(),
                parts: vec![(Part::Question, vec![])],
            });
        } else if open.is_none()
            && !trimmed.is_empty()
            && trimmed.chars().all(|c| c.is_ascii_digit())
        {
            open = Some(Item {
                number: trimmed.to_owned(),
                line: line_no,
                section: section.clone(),
                parts: vec![],
            });
        } else if let (Some(item), Some(part)) = (open.as_mut(), Part::from_marker(trimmed)) {
            item.parts.push((part, Vec::new()));
        } else if trimmed.is_empty() {
            if open.as_ref().is_some_and(Item::is_complete) {
                items.extend(open.take().map(|it| finish(it, &err)).transpose()?);
            }
        } else if let Some(item) = open.as_mut() {
            match item.parts.last_mut() {
                Some((_, lines)) => lines.push(line.to_owned()),
                None => {
                    return Err(err(
                        line_no,
                        format!(
                            "item {}: expected `Instruction` or `Question`, found {trimmed:?}",
                            item.number
                        ),
                    ));
                }
            }
        } else {
            section = Some(trimmed.to_owned());
        }
    }
    items.extend(open.take().map(|it| finish(it, &err)).transpose()?);
    if items.is_empty() {
        return Err(err(
            1,
            "no numbered items found (expected `1Question` or `1` + `Instruction` lines)".into(),
        ));
    }
    let shape = if items[0].question.is_some() {
        "math"
    } else {
        "bio"
    };
    let task = task.unwrap_or(shape).to_owned();
    Ok(QuestionSet {
        id: task.clone(),
        task,
        questions: items,
    })
}

/// `1Question`, `4 Question` -> the number.
fn math_item_start(line: &str) -> Option<String> {
    let rest = line.strip_suffix("Question")?.trim_end();
    (!rest.is_empty() && rest.chars().all(|c| c.is_ascii_digit())).then(|| rest.to_owned())
}

fn finish(
    item: Item,
    err: &impl Fn(usize, String) -> StudyQuestionsError,
) -> Result<Question, StudyQuestionsError> {
    let reference = item
        .text(Part::Answer)
        .or_else(|| item.text(Part::Output))
        .filter(|r| !r.is_empty())
        .ok_or_else(|| {
            err(
                item.line,
                format!("item {} has no `Answer` or `Output` text", item.number),
            )
        })?;
    let question = item.text(Part::Question);
    let instruction = item.text(Part::Instruction);
    if question.is_none() == instruction.is_none() {
        return Err(err(
            item.line,
            format!(
                "item {} needs a `Question` or an `Instruction`",
                item.number
            ),
        ));
    }
    Ok(Question {
        id: item.number.clone(),
        section: item.section.clone(),
        input: instruction
            .as_ref()
            .map(|_| item.text(Part::Input).unwrap_or_default()),
        question,
        instruction,
        reference,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_shapes_with_sections_and_an_empty_input() {
        let math = "Easy\r\n1Question\r\nWhat is 1+1?\r\nAnswer\r\n2\r\n\r\nHard\r\n2 Question\r\nA\r\nB\r\nAnswer\r\nC\r\n";
        let set = parse("m.txt", math, None).unwrap();
        assert_eq!(set.task, "math");
        assert_eq!(set.questions[1].question.as_deref(), Some("A\nB"));
        assert_eq!(set.questions[1].section.as_deref(), Some("Hard"));
        let bio = "In\r\n1\r\nInstruction\r\nDo\r\nInput\r\n\r\nOutput\r\nDone\r\n\r\n";
        let set = parse("b.txt", bio, Some("bio")).unwrap();
        assert_eq!(set.questions[0].input.as_deref(), Some(""));
        assert_eq!(set.questions[0].reference, "Done");
    }

    #[test]
    fn an_item_without_answer_is_reported_with_its_line() {
        let e = parse(
            "m.txt",
            "x\n1Question\nq\n\n2Question\nq\nAnswer\na\n",
            None,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "m.txt:2: item 1 has no `Answer` or `Output` text"
        );
    }
}
