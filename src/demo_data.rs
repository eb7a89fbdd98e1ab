//! The demo sweep's arithmetic word problems: generated from a seed, each with a worked, checkable solution.
//!
//! Every problem is built from its numbers, so the final line of the solution is always right; that makes
//! the demo's math task gradeable by the automatic final-number check as well as by a person.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// One training row: the fields the demo template names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArithRow {
    pub question: String,
    pub answer: String,
}

const NAMES: [&str; 10] = [
    "Ava", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hugo", "Ines", "Jon",
];
const THINGS: [&str; 8] = [
    "apples", "marbles", "stickers", "books", "pencils", "shells", "cards", "coins",
];

/// `n` problems, the same for the same seed.
pub fn arithmetic(seed: u64, n: usize) -> Vec<ArithRow> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|i| problem(&mut rng, i % 5)).collect()
}

fn problem(rng: &mut ChaCha8Rng, kind: usize) -> ArithRow {
    let who = NAMES[rng.random_range(0..NAMES.len())];
    let what = THINGS[rng.random_range(0..THINGS.len())];
    match kind {
        0 => {
            let (a, b) = (rng.random_range(5..60), rng.random_range(3..40));
            row(
                format!(
                    "{who} has {a} {what} and finds {b} more. How many {what} does {who} have now?"
                ),
                format!(
                    "{who} starts with {a} {what} and finds {b} more, so {a} + {b} = {}.",
                    a + b
                ),
                a + b,
            )
        }
        1 => {
            let a = rng.random_range(30..90);
            let b = rng.random_range(2..a);
            row(
                format!("{who} had {a} {what} and gave away {b}. How many {what} are left?"),
                format!(
                    "{who} had {a} {what} and gave away {b}, so {a} - {b} = {}.",
                    a - b
                ),
                a - b,
            )
        }
        2 => {
            let (a, b) = (rng.random_range(2..12), rng.random_range(3..15));
            row(
                format!(
                    "{who} fills {a} boxes with {b} {what} each. How many {what} is that in total?"
                ),
                format!(
                    "There are {a} boxes with {b} {what} in each, so {a} x {b} = {}.",
                    a * b
                ),
                a * b,
            )
        }
        3 => {
            let (per, groups) = (rng.random_range(2..10), rng.random_range(2..10));
            let total = per * groups;
            row(
                format!(
                    "{who} shares {total} {what} equally among {groups} friends. How many {what} does each friend get?"
                ),
                format!(
                    "{total} {what} shared among {groups} friends gives {total} / {groups} = {per} each."
                ),
                per,
            )
        }
        _ => {
            let (a, b, c) = (
                rng.random_range(10..50),
                rng.random_range(5..30),
                rng.random_range(2..20),
            );
            let d = a + b - c;
            row(
                format!(
                    "{who} has {a} {what}, buys {b} more, then loses {c}. How many {what} does {who} have?"
                ),
                format!("First {a} + {b} = {}. Then {} - {c} = {d}.", a + b, a + b),
                d,
            )
        }
    }
}

fn row(question: String, working: String, result: i64) -> ArithRow {
    ArithRow {
        question,
        answer: format!("{working}\nThe answer is {result}."),
    }
}

/// The rows as JSON Lines.
pub fn to_jsonl(rows: &[ArithRow]) -> String {
    rows.iter()
        .filter_map(|r| serde_json::to_string(r).ok())
        .map(|l| l + "\n")
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_problems_and_every_answer_checks_out() {
        let rows = arithmetic(7, 50);
        assert_eq!(rows, arithmetic(7, 50));
        assert_ne!(rows, arithmetic(8, 50));
        for r in &rows {
            let stated: i64 = r
                .answer
                .rsplit(' ')
                .next()
                .unwrap()
                .trim_end_matches('.')
                .parse()
                .unwrap();
            let last_eq: i64 = r
                .answer
                .lines()
                .next()
                .unwrap()
                .rsplit("= ")
                .next()
                .unwrap()
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(stated, last_eq, "{r:?}");
            assert!(stated >= 0, "{r:?}");
        }
    }
}
