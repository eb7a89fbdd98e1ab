//! One exit code, one style, for every command: input the user must fix (a config, a data or model file,
//! a journal, a flag) ends with exit 2 and plain lines, each naming the file and place (`PATH:LINE:COL:
//! message`) or the flag (`error: --flag ...`), with no backtrace hints; anything else is an internal failure,
//! shown with color-eyre's report (exit 1). What journals' readers and writers found (a torn last line)
//! is said on stderr either way.

use std::error::Error;
use std::fmt;
use std::process::ExitCode;

use color_eyre::eyre::Report;
use qlab::config::ConfigErrors;
use qlab::eval::answers::AnswersError;
use qlab::eval::evaluate::EvaluateError;
use qlab::eval::prompts::PromptError;
use qlab::eval::study_questions::StudyQuestionsError;
use qlab::model::ModelError;
use qlab::model::text::tokenizer::TokenizerError;
use qlab::rating::RatingError;
use qlab::rating::context::ContextError;
use qlab::rating::study::StudyError;
use qlab::source::SourceError;
use qlab::store::StoreError;
use qlab::train::TrainError;

/// Exit status for input the user must fix (a bad config, a malformed file, a bad flag value).
pub const EXIT_BAD_INPUT: u8 = 2;

/// Input the user must fix, said as it is (already naming its file or flag).
#[derive(Debug)]
pub struct BadInput(pub String);

impl fmt::Display for BadInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Error for BadInput {}

/// A bad flag value: `error: --flag VALUE: what was expected`, as clap says it.
pub fn bad_flag(flag: &str, message: impl fmt::Display) -> Report {
    Report::new(BadInput(format!("error: {flag}: {message}")))
}

/// A bad input that names its own file (or is about no file at all).
pub fn bad_input(message: impl Into<String>) -> Report {
    Report::new(BadInput(message.into()))
}

/// Refuse to replace an existing output file unless `--force` was given.
pub fn refuse_overwrite(path: &std::path::Path, force: bool) -> color_eyre::Result<()> {
    if path.exists() && !force {
        return Err(bad_input(format!(
            "error: {} already exists: choose a new file, or pass --force to replace it",
            path.display()
        )));
    }
    Ok(())
}

/// Print what the journals said, then the outcome: the exit code to end with.
pub fn finish(result: color_eyre::Result<ExitCode>) -> ExitCode {
    for notice in qlab::store::jsonl::notices() {
        eprintln!("warning: {notice}");
    }
    match result {
        Ok(code) => code,
        Err(e) if e.chain().any(is_bad_input) => {
            eprintln!("{}", plain(&e));
            ExitCode::from(EXIT_BAD_INPUT)
        }
        Err(e) => {
            eprintln!("Error: {e:?}");
            ExitCode::FAILURE
        }
    }
}

/// The failure and its causes joined by `: `, leaving out a cause its parent already says (errors that
/// print `{path}: {source}` and also name the source as their cause).
fn plain(e: &Report) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let said = cause.to_string();
        if !text.contains(&said) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&said);
        }
    }
    text
}

/// Whether an error in a failure's chain is the user's input rather than qlab's own failure.
fn is_bad_input(e: &(dyn Error + 'static)) -> bool {
    if e.is::<BadInput>() || e.is::<ConfigErrors>() {
        return true;
    }
    if let Some(e) = e.downcast_ref::<StudyQuestionsError>() {
        return matches!(
            e,
            StudyQuestionsError::Format { .. } | StudyQuestionsError::Store(_)
        );
    }
    if let Some(e) = e.downcast_ref::<StoreError>() {
        return store_input(e);
    }
    if let Some(e) = e.downcast_ref::<RatingError>() {
        return matches!(e, RatingError::Store(s) if store_input(s))
            || matches!(
                e,
                RatingError::Journal { .. }
                    | RatingError::Answers { .. }
                    | RatingError::Refused { .. }
                    | RatingError::Rubric(_)
                    | RatingError::Pair(_)
            );
    }
    if let Some(e) = e.downcast_ref::<ContextError>() {
        return !matches!(e, ContextError::Rating(_));
    }
    if let Some(e) = e.downcast_ref::<AnswersError>() {
        return matches!(e, AnswersError::BadLine { .. })
            || matches!(e, AnswersError::Store(s) if store_input(s));
    }
    if let Some(e) = e.downcast_ref::<EvaluateError>() {
        return matches!(
            e,
            EvaluateError::UnknownModel(_)
                | EvaluateError::ChatDisabled(_)
                | EvaluateError::NoQuestions(_)
                | EvaluateError::Questions(_)
        );
    }
    if let Some(e) = e.downcast_ref::<PromptError>() {
        return !matches!(e, PromptError::Chat(_));
    }
    if let Some(e) = e.downcast_ref::<TrainError>() {
        return matches!(e, TrainError::Data { .. });
    }
    if let Some(e) = e.downcast_ref::<ModelError>() {
        return !matches!(e, ModelError::Io { .. } | ModelError::Candle(_));
    }
    if let Some(e) = e.downcast_ref::<TokenizerError>() {
        return !matches!(e, TokenizerError::Codec(_));
    }
    if let Some(e) = e.downcast_ref::<StudyError>() {
        return match e {
            // The folder or file the user named is not there.
            StudyError::Io { source, .. } => source.kind() == std::io::ErrorKind::NotFound,
            StudyError::Store(s) => store_input(s),
            StudyError::Rating(RatingError::Store(s)) => store_input(s),
            _ => true,
        };
    }
    if let Some(e) = e.downcast_ref::<SourceError>() {
        return matches!(
            e,
            SourceError::MissingPath(_)
                | SourceError::BadRequirement(_)
                | SourceError::FileNotInWheel { .. }
                | SourceError::ChecksumMismatch { .. }
        ) || matches!(e, SourceError::Store(s) if store_input(s));
    }
    false
}

/// A store error that is about the content of a file the user gave (not the disk or the system).
fn store_input(e: &StoreError) -> bool {
    matches!(e, StoreError::Line { .. } | StoreError::TooLarge { .. })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_input_is_found_in_the_chain_and_said_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file");
        let e = Report::new(StudyError::Io {
            path: "nope".into(),
            source: io,
        });
        assert!(e.chain().any(is_bad_input));
        assert_eq!(plain(&e), "nope: No such file");
        let wrapped = bad_flag("--rows", "must be at least 1").wrap_err("demo-data");
        assert!(wrapped.chain().any(is_bad_input));
        assert_eq!(
            plain(&wrapped),
            "demo-data: error: --rows: must be at least 1"
        );
        let internal = color_eyre::eyre::eyre!("cannot start the runner thread");
        assert!(!internal.chain().any(is_bad_input));
    }
}
