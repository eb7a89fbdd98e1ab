//! The generation loop against a toy decoder whose next token is a known function of the attended history.

use super::*;

use super::toy::{ToyLm, toy_next};

fn greedy(max_new_tokens: usize, stop_ids: Vec<u32>) -> GenerateOptions {
    GenerateOptions {
        max_new_tokens,
        sampling: Sampling::Greedy,
        stop_ids,
        pad_id: 0,
    }
}

/// The expected greedy continuation, by running the rule directly.
fn reference(prompt: &[u32], max_new: usize, stop: &[u32]) -> Vec<u32> {
    let mut history = prompt.to_vec();
    let mut out = Vec::new();
    while out.len() < max_new {
        let next = toy_next(&history);
        if stop.contains(&next) {
            break;
        }
        out.push(next);
        history.push(next);
    }
    out
}

#[test]
fn greedy_follows_the_model_through_the_cache() {
    let mut model = ToyLm::new();
    let (out, stats) = generate(
        &mut model,
        &[vec![3, 5, 2]],
        &greedy(12, vec![]),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(out[0].ids, reference(&[3, 5, 2], 12, &[]));
    assert_eq!(out[0].finish, Finish::Length);
    assert_eq!((stats.new_tokens, stats.prompt_tokens), (12, 3));
}

#[test]
fn a_left_padded_batch_equals_each_prompt_alone() {
    let prompts = vec![vec![1, 2, 3, 4, 5], vec![9], vec![4, 4, 1]];
    let mut model = ToyLm::new();
    let (batch, _) = generate(&mut model, &prompts, &greedy(10, vec![]), &mut |_| {}).unwrap();
    for (prompt, got) in prompts.iter().zip(&batch) {
        let (alone, _) = generate(
            &mut model,
            std::slice::from_ref(prompt),
            &greedy(10, vec![]),
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(got.ids, alone[0].ids, "prompt {prompt:?}");
        assert_eq!(got.ids, reference(prompt, 10, &[]));
    }
}

#[test]
fn stops_at_a_stop_id_without_emitting_it() {
    let prompt = vec![3, 5, 2];
    let full = reference(&prompt, 12, &[]);
    let stop = full[4];
    let first_stop = full.iter().position(|&t| t == stop).unwrap();
    let mut model = ToyLm::new();
    let (out, _) = generate(
        &mut model,
        &[prompt, vec![1]],
        &greedy(12, vec![stop]),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(out[0].ids, full[..first_stop].to_vec());
    assert_eq!(out[0].finish, Finish::Stop);
    assert_eq!(out[1].ids, reference(&[1], 12, &[stop]));
}

#[test]
fn streaming_sees_every_token_in_order() {
    let prompts = vec![vec![2, 7], vec![5]];
    let stop = reference(&[5], 6, &[])[2];
    let mut seen: Vec<Vec<u32>> = vec![Vec::new(); 2];
    let mut done: Vec<(usize, Vec<u32>, Finish)> = Vec::new();
    let mut model = ToyLm::new();
    let (out, _) = generate(
        &mut model,
        &prompts,
        &greedy(6, vec![stop]),
        &mut |e: GenEvent| match e {
            GenEvent::Token { row, id } => seen[row].push(id),
            GenEvent::Done { row, ids, finish } => done.push((row, ids.to_vec(), finish)),
        },
    )
    .unwrap();
    assert_eq!(seen, out.iter().map(|g| g.ids.clone()).collect::<Vec<_>>());
    let mut expected: Vec<(usize, Vec<u32>, Finish)> = out
        .iter()
        .enumerate()
        .map(|(row, g)| (row, g.ids.clone(), g.finish))
        .collect();
    expected.sort_by_key(|(row, ids, _)| (ids.len(), *row));
    assert_eq!(done, expected, "each row reported once, as soon as it ends");
}

#[test]
fn sampling_is_reproducible_by_seed_and_varies_across_seeds() {
    let run = |seed| {
        let opts = GenerateOptions {
            sampling: Sampling::Sample {
                temperature: 1.5,
                top_p: Some(0.95),
                seed,
            },
            ..greedy(8, vec![])
        };
        generate(&mut ToyLm::new(), &[vec![1, 2]], &opts, &mut |_| {})
            .unwrap()
            .0[0]
            .ids
            .clone()
    };
    assert_eq!(run(7), run(7));
    let distinct: std::collections::HashSet<Vec<u32>> = (0..8).map(run).collect();
    assert!(distinct.len() > 1, "8 seeds gave one output");
}

#[test]
fn empty_prompts_are_refused() {
    let err = generate(
        &mut ToyLm::new(),
        &[vec![1], vec![]],
        &greedy(3, vec![]),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(err.to_string().contains("prompt 1 is empty"), "{err}");
}

/// A toy model that records whether each forward pass ran on one of rayon's threads.
struct WhereLm {
    toy: ToyLm,
    in_pool: bool,
    seen: Vec<bool>,
}

impl CausalLm for WhereLm {
    fn forward(
        &mut self,
        ids: &Tensor,
        offset: usize,
        attend: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        self.seen.push(rayon::current_thread_index().is_some());
        self.toy.forward(ids, offset, attend)
    }
    fn clear_cache(&mut self) {
        self.toy.clear_cache()
    }
    fn runs_in_pool(&self) -> bool {
        self.in_pool
    }
    fn device(&self) -> &Device {
        self.toy.device()
    }
}

#[test]
fn a_model_that_asks_for_rayons_pool_runs_every_pass_there_with_the_same_answers() {
    let prompts = [vec![3, 5, 2], vec![1]];
    let mut answers = Vec::new();
    for in_pool in [true, false] {
        let mut model = WhereLm {
            toy: ToyLm::new(),
            in_pool,
            seen: Vec::new(),
        };
        let (out, _) = generate(&mut model, &prompts, &greedy(6, vec![]), &mut |_| {}).unwrap();
        assert_eq!(model.seen.len(), 6, "prefill and five decode steps");
        assert!(
            model.seen.iter().all(|&s| s == in_pool),
            "{in_pool}: {:?}",
            model.seen
        );
        answers.push(out);
    }
    assert_eq!(answers[0], answers[1]);
}
