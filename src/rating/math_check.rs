//! The automatic math check: does the answer's final number equal the reference's final number?
//! Shown to the rater as a hint after scoring, and counted per cell as the results' "auto: exact answer"
//! column; never part of the human score.

/// The last number written in `text` (commas between digit groups allowed, `-` and decimals kept).
pub fn final_number(text: &str) -> Option<f64> {
    let chars: Vec<char> = text.chars().collect();
    let mut last = None;
    let mut i = 0;
    while i < chars.len() {
        if chars[i].is_ascii_digit() {
            let start = i;
            let mut s = String::new();
            while i < chars.len() {
                let c = chars[i];
                let next_digit = chars.get(i + 1).is_some_and(char::is_ascii_digit);
                if c.is_ascii_digit() || (c == '.' && next_digit && !s.contains('.')) {
                    s.push(c);
                } else if c != ',' || !next_digit {
                    break;
                }
                i += 1;
            }
            let negative = start > 0
                && chars[start - 1] == '-'
                && (start < 2 || !chars[start - 2].is_alphanumeric());
            last = s.parse::<f64>().ok().map(|v| if negative { -v } else { v });
        } else {
            i += 1;
        }
    }
    last
}

/// Whether a question set's answers can be checked by their final number: it has references and every
/// one of them has a number to compare with.
///
/// The one decision behind both the Rating screen's hint and the results' automatic check. It is made
/// from the references themselves, not from the task's name: a set of word problems whose references
/// end in their result qualifies whatever it is called, and a set of free-text answers (the study's bio
/// questions: "Sore throat, pain on swallowing, high fever.") does not, since some reference has no
/// number at all. A free-text set whose every reference happens to mention a number would pass; a
/// question set cannot yet say otherwise.
pub fn references_are_numeric<'a>(references: impl IntoIterator<Item = &'a str>) -> bool {
    let mut any = false;
    for r in references {
        if final_number(r).is_none() {
            return false;
        }
        any = true;
    }
    any
}

/// The hint shown after an item is scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MathHint {
    Matches,
    Differs,
    NoNumber,
}

impl MathHint {
    pub fn label(self) -> &'static str {
        match self {
            MathHint::Matches => "final number matches the reference",
            MathHint::Differs => "final number differs from the reference",
            MathHint::NoNumber => "no final number to compare",
        }
    }
}

/// Compare the final numbers of an answer and its reference (relative tolerance 1e-6).
pub fn check(answer: &str, reference: &str) -> MathHint {
    match (final_number(answer), final_number(reference)) {
        (Some(a), Some(r)) if (a - r).abs() <= 1e-6 * r.abs().max(1.0) => MathHint::Matches,
        (Some(_), Some(_)) => MathHint::Differs,
        _ => MathHint::NoNumber,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_last_number_in_common_shapes() {
        assert_eq!(final_number("14 + 11 = 25."), Some(25.0));
        assert_eq!(final_number("It costs $1,250.50 in total"), Some(1250.5));
        assert_eq!(final_number("The result is -3"), Some(-3.0));
        assert_eq!(final_number("x-3"), Some(3.0));
        assert_eq!(final_number("numbers 10, 11, 12"), Some(12.0));
        assert_eq!(final_number("none here"), None);
    }

    #[test]
    fn compares_answer_and_reference() {
        assert_eq!(check("So the number is 16.", "23-7=16"), MathHint::Matches);
        assert_eq!(
            check("Therefore, the sum is 26.", "14 + 11 = 25."),
            MathHint::Differs
        );
        assert_eq!(check("I cannot tell.", "25"), MathHint::NoNumber);
    }

    #[test]
    fn a_set_is_numeric_when_every_reference_has_a_number() {
        assert!(references_are_numeric(["14 + 11 = 25.", "RS100=1 pound"]));
        assert!(!references_are_numeric([
            "Bradycardia: under 60 beats per minute.",
            "Gastritis mainly affects the stomach."
        ]));
        assert!(
            !references_are_numeric([]),
            "no references, nothing to check"
        );
    }
}
