//! Turning rendered text into token sequences with a loss mask: tokenize, append EOS, truncate, pack.

use super::template::Rendered;
use crate::train::settings::TrainOn;

/// What the trainer needs from a tokenizer.
pub trait TextEncoder {
    /// Token ids of `text` and, for each token, the byte offset in `text` where it starts.
    fn encode(&self, text: &str) -> Result<(Vec<u32>, Vec<usize>), String>;
    /// The end-of-sequence token appended to every example.
    fn eos_id(&self) -> u32;
}

/// One training sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub ids: Vec<u32>,
    /// `trained[i]`: predicting `ids[i]` from the tokens before it counts in the loss.
    pub trained: Vec<bool>,
    /// Row number (in the dataset file) of the first record in this sequence.
    pub row: usize,
}

/// Tokenize one rendered record and append EOS; the EOS is trained like the completion.
pub fn encode_example(
    rendered: &Rendered,
    row: usize,
    encoder: &dyn TextEncoder,
    train_on: TrainOn,
) -> Result<Example, String> {
    let (mut ids, starts) = encoder.encode(&rendered.text)?;
    let mut trained: Vec<bool> = match train_on {
        TrainOn::All => vec![true; ids.len()],
        TrainOn::Completion => starts
            .iter()
            .map(|&s| s >= rendered.completion_start)
            .collect(),
    };
    ids.push(encoder.eos_id());
    trained.push(true);
    Ok(Example { ids, trained, row })
}

/// Cut sequences longer than `max_len`; returns how many were cut.
pub fn truncate(examples: &mut [Example], max_len: usize) -> usize {
    let mut cut = 0;
    for ex in examples.iter_mut().filter(|e| e.ids.len() > max_len) {
        ex.ids.truncate(max_len);
        ex.trained.truncate(max_len);
        cut += 1;
    }
    cut
}

/// Concatenate all examples in order and cut the stream into sequences of `max_len` tokens (the last may be
/// shorter). The first token of each example keeps its mask, so no loss crosses from one row's EOS
/// into a wrong target: the model simply continues the stream.
pub fn pack(examples: Vec<Example>, max_len: usize) -> Vec<Example> {
    let mut out = Vec::new();
    let mut cur = Example {
        ids: Vec::new(),
        trained: Vec::new(),
        row: examples.first().map_or(0, |e| e.row),
    };
    for ex in examples {
        for (id, t) in ex.ids.into_iter().zip(ex.trained) {
            if cur.ids.len() == max_len {
                let next = Example {
                    ids: Vec::new(),
                    trained: Vec::new(),
                    row: ex.row,
                };
                out.push(std::mem::replace(&mut cur, next));
            }
            if cur.ids.is_empty() {
                cur.row = ex.row;
            }
            cur.ids.push(id);
            cur.trained.push(t);
        }
    }
    if !cur.ids.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::train::toy::ByteEncoder;

    fn rendered(text: &str, completion_start: usize) -> Rendered {
        Rendered {
            text: text.to_string(),
            completion_start,
        }
    }

    #[test]
    fn completion_mask_starts_at_the_completion_and_covers_eos() {
        let ex =
            encode_example(&rendered("ab:cd", 3), 1, &ByteEncoder, TrainOn::Completion).unwrap();
        assert_eq!(ex.ids, vec![97, 98, 58, 99, 100, 256]);
        assert_eq!(ex.trained, vec![false, false, false, true, true, true]);
        let all = encode_example(&rendered("ab:cd", 3), 1, &ByteEncoder, TrainOn::All).unwrap();
        assert!(all.trained.iter().all(|&t| t));
    }

    #[test]
    fn truncation_counts_cut_rows() {
        let mut exs = vec![
            encode_example(&rendered("abcdef", 0), 1, &ByteEncoder, TrainOn::All).unwrap(),
            encode_example(&rendered("ab", 0), 2, &ByteEncoder, TrainOn::All).unwrap(),
        ];
        assert_eq!(truncate(&mut exs, 4), 1);
        assert_eq!(exs[0].ids.len(), 4);
        assert_eq!(exs[1].ids.len(), 3);
    }

    #[test]
    fn packing_fills_sequences_in_order_and_keeps_every_token() {
        let exs: Vec<_> = ["abc", "de", "fghij"]
            .iter()
            .enumerate()
            .map(|(i, t)| {
                encode_example(&rendered(t, 0), i + 1, &ByteEncoder, TrainOn::All).unwrap()
            })
            .collect();
        let total: usize = exs.iter().map(|e| e.ids.len()).sum();
        let packed = pack(exs, 4);
        assert_eq!(
            packed.iter().map(|e| e.ids.len()).collect::<Vec<_>>(),
            vec![4, 4, 4, 1]
        );
        assert_eq!(packed.iter().map(|e| e.ids.len()).sum::<usize>(), total);
        assert_eq!(packed[0].ids, vec![97, 98, 99, 256]);
        assert_eq!(
            packed.iter().map(|e| e.row).collect::<Vec<_>>(),
            vec![1, 2, 3, 3]
        );
    }
}
