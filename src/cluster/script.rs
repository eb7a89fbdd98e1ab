//! What a cell's batch job is, independent of the scheduler: its name, where it writes, what it asks for and
//! the qlab command it runs; and shell quoting for the scripts that carry it.

use std::path::PathBuf;

use crate::config::ClusterSection;

/// One cell's job, ready to be written as a script by a [`super::Backend`].
#[derive(Debug, Clone, PartialEq)]
pub struct JobSpec {
    /// `qlab-<sweep>-<run id>`.
    pub name: String,
    pub run_id: String,
    /// The run directory (absolute): the job's output goes there.
    pub run_dir: PathBuf,
    /// The directory the job starts in: the config's (absolute).
    pub workdir: PathBuf,
    /// The cell's cluster settings (`[cluster]` with its overrides).
    pub settings: ClusterSection,
    /// The command the job runs on its node, after the setup lines.
    pub command: Vec<String>,
}

/// `s` as one word for a POSIX shell: bare when it is plain, else in single quotes.
pub fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars().all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(c, '/' | '.' | '_' | '-' | ':' | '=' | ',' | '+' | '@')
        });
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_keeps_plain_words_and_wraps_the_rest() {
        assert_eq!(shell_quote("/opt/qlab/bin/qlab"), "/opt/qlab/bin/qlab");
        assert_eq!(shell_quote("my dir/x"), "'my dir/x'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("$HOME"), "'$HOME'");
    }
}
