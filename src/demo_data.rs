//! The demo sweep's arithmetic word problems: generated from a seed, each with a worked, checkable solution.
//!
//! Every problem is built from its numbers, so the final line of the solution is always right; that makes
//! the demo's math task gradeable by the automatic final-number check as well as by a person. The numbers
//! are small (up to 20, tables up to 6 x 6) and the working breaks a two-digit number into its tens, then its
//! ones: steps a 135M model can follow, so that minutes of fine-tuning can teach it sums, not only the format.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// One training row: the fields the demo template names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArithRow {
    pub question: String,
    pub answer: String,
}

/// The kinds of problem; rows cycle through them in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Add,
    Subtract,
    Multiply,
    Divide,
    AddThenSubtract,
    SubtractThenAdd,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Add,
        Kind::Subtract,
        Kind::Multiply,
        Kind::Divide,
        Kind::AddThenSubtract,
        Kind::SubtractThenAdd,
    ];
}

const NAMES: [&str; 10] = [
    "Ava", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hugo", "Ines", "Jon",
];
const THINGS: [&str; 8] = [
    "apples", "marbles", "stickers", "books", "pencils", "shells", "cards", "coins",
];

/// Wordings of each kind; `{who}`, `{what}` and the numbers `{a}`, `{b}`, `{c}` are filled in.
const ADD: [&str; 4] = [
    "{who} has {a} {what} and finds {b} more. How many {what} does {who} have now?",
    "{who} had {a} {what}. A friend gave {who} {b} more. How many {what} does {who} have?",
    "There are {a} {what} in one bag and {b} in another. How many {what} are there altogether?",
    "{who} collected {a} {what} on Monday and {b} on Tuesday. How many {what} did {who} collect in total?",
];
const SUBTRACT: [&str; 3] = [
    "{who} had {a} {what} and gave away {b}. How many {what} are left?",
    "{who} had {a} {what} and lost {b} of them. How many {what} does {who} have now?",
    "A box holds {a} {what}. {who} takes out {b}. How many {what} are still in the box?",
];
const MULTIPLY: [&str; 3] = [
    "{who} fills {a} boxes with {b} {what} each. How many {what} is that in total?",
    "There are {a} bags with {b} {what} in each bag. How many {what} are there?",
    "{who} buys {a} packs of {what}. Each pack has {b} {what}. How many {what} does {who} buy?",
];
const DIVIDE: [&str; 2] = [
    "{who} shares {a} {what} equally among {b} friends. How many {what} does each friend get?",
    "{a} {what} are packed into {b} equal boxes. How many {what} go in each box?",
];
const ADD_THEN_SUBTRACT: &str =
    "{who} has {a} {what}, buys {b} more, then loses {c}. How many {what} does {who} have?";
const SUBTRACT_THEN_ADD: &str = "{who} had {a} {what}, gave away {b}, then found {c} more. How many {what} does {who} have now?";

/// `n` problems, the same for the same seed.
pub fn arithmetic(seed: u64, n: usize) -> Vec<ArithRow> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|i| problem(&mut rng, Kind::ALL[i % Kind::ALL.len()]))
        .collect()
}

fn problem(rng: &mut ChaCha8Rng, kind: Kind) -> ArithRow {
    let who = pick(rng, &NAMES);
    let what = pick(rng, &THINGS);
    let (wording, [a, b, c], working, result) = match kind {
        Kind::Add => {
            let (a, b) = (rng.random_range(2..13), rng.random_range(2..10));
            (pick(rng, &ADD), [a, b, 0], add_steps(a, b), a + b)
        }
        Kind::Subtract => {
            let a = rng.random_range(5..20);
            let b = rng.random_range(2..a);
            (pick(rng, &SUBTRACT), [a, b, 0], subtract_steps(a, b), a - b)
        }
        Kind::Multiply => {
            let (a, b) = (rng.random_range(2..7), rng.random_range(2..7));
            (pick(rng, &MULTIPLY), [a, b, 0], multiply_steps(a, b), a * b)
        }
        Kind::Divide => {
            let (each, groups) = (rng.random_range(2..7), rng.random_range(2..7));
            let total = each * groups;
            let working =
                format!("{total} / {groups} = {each}, because {groups} x {each} = {total}");
            (pick(rng, &DIVIDE), [total, groups, 0], working, each)
        }
        Kind::AddThenSubtract => {
            let (a, b) = (rng.random_range(2..13), rng.random_range(2..10));
            let c = rng.random_range(2..(a + b).min(10));
            let working = format!(
                "First {}. Then {}",
                add_steps(a, b),
                subtract_steps(a + b, c)
            );
            (ADD_THEN_SUBTRACT, [a, b, c], working, a + b - c)
        }
        Kind::SubtractThenAdd => {
            let a = rng.random_range(6..20);
            let (b, c) = (rng.random_range(2..a - 3), rng.random_range(2..10));
            let working = format!(
                "First {}. Then {}",
                subtract_steps(a, b),
                add_steps(a - b, c)
            );
            (SUBTRACT_THEN_ADD, [a, b, c], working, a - b + c)
        }
    };
    let question = wording
        .replace("{who}", who)
        .replace("{what}", what)
        .replace("{a}", &a.to_string())
        .replace("{b}", &b.to_string())
        .replace("{c}", &c.to_string());
    ArithRow {
        question,
        answer: format!("{working}.\nThe answer is {result}."),
    }
}

fn pick<'a>(rng: &mut ChaCha8Rng, options: &[&'a str]) -> &'a str {
    options[rng.random_range(0..options.len())]
}

/// The tens and the ones of `n`, when it has both (`None` for 7 or 30: nothing to break up).
fn tens_and_ones(n: i64) -> Option<(i64, i64)> {
    let (tens, ones) = (n / 10 * 10, n % 10);
    (tens > 0 && ones > 0).then_some((tens, ones))
}

/// `a + b`, adding the tens of `b` first, then its ones: `23 + 14 = 23 + 10 + 4 = 33 + 4 = 37`.
pub fn add_steps(a: i64, b: i64) -> String {
    match tens_and_ones(b) {
        Some((tens, ones)) => format!(
            "{a} + {b} = {a} + {tens} + {ones} = {} + {ones} = {}",
            a + tens,
            a + b
        ),
        None => format!("{a} + {b} = {}", a + b),
    }
}

/// `a - b`, taking away the tens of `b` first, then its ones: `61 - 25 = 61 - 20 - 5 = 41 - 5 = 36`.
pub fn subtract_steps(a: i64, b: i64) -> String {
    match tens_and_ones(b) {
        Some((tens, ones)) => format!(
            "{a} - {b} = {a} - {tens} - {ones} = {} - {ones} = {}",
            a - tens,
            a - b
        ),
        None => format!("{a} - {b} = {}", a - b),
    }
}

/// `a x b`, multiplying by the tens of `b` and by its ones: `8 x 12 = 8 x 10 + 8 x 2 = 80 + 16 = 96`.
pub fn multiply_steps(a: i64, b: i64) -> String {
    match tens_and_ones(b) {
        Some((tens, ones)) => format!(
            "{a} x {b} = {a} x {tens} + {a} x {ones} = {} + {} = {}",
            a * tens,
            a * ones,
            a * b
        ),
        None => format!("{a} x {b} = {}", a * b),
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

    /// The value of `23 + 10 + 4` or `8 x 10 + 8 x 2`: products and quotients first, then sums.
    fn eval(expr: &str) -> i64 {
        let tokens: Vec<&str> = expr.split(' ').collect();
        let mut total = 0;
        let mut sign = 1;
        let mut term: Option<i64> = None;
        let mut i = 0;
        while i < tokens.len() {
            match tokens[i] {
                "+" | "-" => {
                    total += sign * term.take().unwrap();
                    sign = if tokens[i] == "+" { 1 } else { -1 };
                }
                "x" | "/" => {
                    let (left, right) = (term.unwrap(), tokens[i + 1].parse::<i64>().unwrap());
                    term = Some(if tokens[i] == "x" {
                        left * right
                    } else {
                        assert_eq!(left % right, 0, "{expr}: not a whole quotient");
                        left / right
                    });
                    i += 1;
                }
                n => term = Some(n.parse().unwrap()),
            }
            i += 1;
        }
        total + sign * term.unwrap()
    }

    /// Every `=` of every step holds; returns the value the last step arrives at.
    fn check_working(working: &str) -> i64 {
        let mut last = None;
        for step in working.trim_end_matches('.').split(". Then ") {
            let step = step.trim_start_matches("First ");
            let chain = step.split(", because ").next().unwrap();
            let values: Vec<i64> = chain.split(" = ").map(eval).collect();
            assert!(
                values.windows(2).all(|w| w[0] == w[1]),
                "{step}: {values:?}"
            );
            last = values.last().copied();
        }
        last.unwrap()
    }

    fn numbers(text: &str) -> Vec<i64> {
        text.split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse().ok())
            .collect()
    }

    #[test]
    fn same_seed_same_problems() {
        let rows = arithmetic(7, 60);
        assert_eq!(rows, arithmetic(7, 60));
        assert_ne!(rows, arithmetic(8, 60));
    }

    #[test]
    fn every_step_holds_and_the_final_number_answers_the_question() {
        for (i, r) in arithmetic(3407, 600).iter().enumerate() {
            let (working, last_line) = r.answer.split_once('\n').unwrap();
            let stated: i64 = last_line
                .strip_prefix("The answer is ")
                .and_then(|n| n.strip_suffix('.'))
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(check_working(working), stated, "{r:?}");
            let n = numbers(&r.question);
            let expected = match Kind::ALL[i % Kind::ALL.len()] {
                Kind::Add => n[0] + n[1],
                Kind::Subtract => n[0] - n[1],
                Kind::Multiply => n[0] * n[1],
                Kind::Divide => n[0] / n[1],
                Kind::AddThenSubtract => n[0] + n[1] - n[2],
                Kind::SubtractThenAdd => n[0] - n[1] + n[2],
            };
            assert_eq!(stated, expected, "{r:?}");
            assert!(stated > 0, "{r:?}");
        }
    }

    #[test]
    fn every_wording_of_every_kind_is_used() {
        let rows = arithmetic(3407, 600);
        let wordings = ADD
            .iter()
            .chain(&SUBTRACT)
            .chain(&MULTIPLY)
            .chain(&DIVIDE)
            .chain([&ADD_THEN_SUBTRACT, &SUBTRACT_THEN_ADD]);
        for w in wordings {
            let literals: Vec<&str> = w
                .split('{')
                .map(|part| part.split_once('}').map_or(part, |(_, text)| text))
                .filter(|text| !text.trim().is_empty())
                .collect();
            assert!(
                rows.iter()
                    .any(|r| literals.iter().all(|l| r.question.contains(l))),
                "no row worded like {w:?}"
            );
        }
    }

    #[test]
    fn sums_are_broken_into_tens_and_ones() {
        assert_eq!(add_steps(23, 14), "23 + 14 = 23 + 10 + 4 = 33 + 4 = 37");
        assert_eq!(add_steps(38, 5), "38 + 5 = 43");
        assert_eq!(add_steps(38, 20), "38 + 20 = 58");
        assert_eq!(
            subtract_steps(61, 25),
            "61 - 25 = 61 - 20 - 5 = 41 - 5 = 36"
        );
        assert_eq!(subtract_steps(52, 9), "52 - 9 = 43");
        assert_eq!(
            multiply_steps(8, 12),
            "8 x 12 = 8 x 10 + 8 x 2 = 80 + 16 = 96"
        );
        assert_eq!(multiply_steps(7, 8), "7 x 8 = 56");
    }
}
