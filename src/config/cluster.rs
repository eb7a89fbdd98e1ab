//! `[cluster]`: where the sweep's cells train (this machine, or one SLURM batch job per cell) and what each
//! job asks SLURM for; `[[override]] cluster = { ... }` changes it per model or dataset. Checked like every
//! other section, each problem at its key.

use serde::{Deserialize, Serialize};

use super::checks::Problem;
use super::diagnostic::Diagnostic;
use super::{Config, from_table};

/// Who runs the cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// Worker threads of `qlab run` on this machine.
    #[default]
    Local,
    /// One SLURM batch job per cell, submitted with sbatch.
    Slurm,
}

/// `[cluster]`: the SLURM job of each cell (`backend = "local"` ignores the rest).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSection {
    pub backend: BackendKind,
    pub partition: Option<String>,
    pub account: Option<String>,
    pub qos: Option<String>,
    /// sbatch `--time`: `MINUTES`, `MM:SS`, `HH:MM:SS`, `D-HH`, `D-HH:MM` or `D-HH:MM:SS`.
    pub time: Option<String>,
    /// `--gpus=N`.
    pub gpus: Option<u32>,
    /// `--gres=...` (e.g. `gpu:a100:1`), instead of `gpus`.
    pub gres: Option<String>,
    pub cpus_per_task: Option<u32>,
    /// `--mem`: a number of megabytes, or with a K, M, G or T suffix.
    pub mem: Option<String>,
    /// More sbatch options, one per `#SBATCH` line (`--constraint=a100`).
    pub sbatch_args: Vec<String>,
    /// Shell lines run on the node before qlab (`module load cuda`, `source venv/bin/activate`).
    pub setup: Vec<String>,
    /// Seconds before the time limit at which SLURM sends the job SIGUSR1 (checkpoint, then requeue).
    pub signal_lead: u32,
    /// After checkpointing on the warning signal, the job requeues itself (`scontrol requeue`).
    pub requeue: bool,
    /// The qlab binary the job runs (default: the one that submits, which must be on a shared filesystem).
    pub qlab: Option<String>,
}

impl Default for ClusterSection {
    fn default() -> Self {
        ClusterSection {
            backend: BackendKind::Local,
            partition: None,
            account: None,
            qos: None,
            time: None,
            gpus: None,
            gres: None,
            cpus_per_task: None,
            mem: None,
            sbatch_args: Vec::new(),
            setup: Vec::new(),
            signal_lead: 120,
            requeue: true,
            qlab: None,
        }
    }
}

/// sbatch options qlab writes itself; `sbatch_args` may not set them.
pub const OWN_SBATCH_OPTIONS: [&str; 7] = [
    "--job-name",
    "--output",
    "--error",
    "--open-mode",
    "--chdir",
    "--signal",
    "--requeue",
];

/// Seconds in a SLURM time limit: `MINUTES`, `MM:SS`, `HH:MM:SS`, `D-HH`, `D-HH:MM`, `D-HH:MM:SS`.
pub fn time_limit_secs(s: &str) -> Option<u64> {
    let num = |x: &str| -> Option<u64> {
        (!x.is_empty() && x.chars().all(|c| c.is_ascii_digit()))
            .then(|| x.parse().ok())
            .flatten()
    };
    let (days, rest) = match s.split_once('-') {
        Some((d, rest)) => (Some(num(d)?), rest),
        None => (None, s),
    };
    let parts: Vec<u64> = rest.split(':').map(num).collect::<Option<_>>()?;
    let secs = match (days, parts.as_slice()) {
        (None, [m]) => m * 60,
        (None, [m, s]) => m * 60 + s,
        (None, [h, m, s]) => h * 3600 + m * 60 + s,
        (Some(d), [h]) => d * 86400 + h * 3600,
        (Some(d), [h, m]) => d * 86400 + h * 3600 + m * 60,
        (Some(d), [h, m, s]) => d * 86400 + h * 3600 + m * 60 + s,
        _ => return None,
    };
    Some(secs)
}

fn slurm_name(value: &str) -> bool {
    !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ',' | ':' | '+'))
}

/// The problems of one `[cluster]` table (the section, or the section patched by an override).
pub fn check(c: &ClusterSection) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut push = |key: &str, msg: String| out.push((key.to_owned(), msg));
    for (key, value) in [
        ("partition", &c.partition),
        ("account", &c.account),
        ("qos", &c.qos),
    ] {
        if let Some(v) = value.as_deref().filter(|v| !slurm_name(v)) {
            push(
                key,
                format!("`{v}`: expected a SLURM {key} name (letters, digits, `_`, `-`, `.`, `,`)"),
            );
        }
    }
    let limit = c.time.as_deref().map(|t| (t, time_limit_secs(t)));
    if let Some((t, None)) = limit {
        push(
            "time",
            format!(
                "`{t}`: expected a SLURM time limit: MINUTES, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS"
            ),
        );
    }
    if c.gpus == Some(0) {
        push(
            "gpus",
            "`gpus` must be at least 1; leave it out for a job without GPUs".into(),
        );
    }
    if let Some(g) = &c.gres {
        if c.gpus.is_some() {
            push(
                "gres",
                "`gres` and `gpus` both ask for GPUs: keep one of them".into(),
            );
        } else if !slurm_name(g) {
            push(
                "gres",
                format!("`{g}`: expected a SLURM gres like `gpu:2` or `gpu:a100:1`"),
            );
        }
    }
    if c.cpus_per_task == Some(0) {
        push("cpus_per_task", "`cpus_per_task` must be at least 1".into());
    }
    if let Some(m) = &c.mem {
        let digits = m.trim_end_matches(['K', 'M', 'G', 'T']);
        if digits.is_empty()
            || !digits.chars().all(|ch| ch.is_ascii_digit())
            || m.len() > digits.len() + 1
        {
            push(
                "mem",
                format!("`{m}`: expected megabytes, or a number with K, M, G or T (`64G`)"),
            );
        }
    }
    for (i, arg) in c.sbatch_args.iter().enumerate() {
        let key = format!("sbatch_args.{i}");
        let name = arg.split(['=', ' ']).next().unwrap_or("");
        if !arg.starts_with('-') || arg.contains('\n') {
            push(
                &key,
                format!("`{arg}`: expected one sbatch option, like `--constraint=a100`"),
            );
        } else if OWN_SBATCH_OPTIONS.contains(&name) {
            push(&key, format!("qlab writes `{name}` itself; leave it out"));
        }
    }
    for (i, line) in c.setup.iter().enumerate() {
        if line.contains('\n') {
            push(
                &format!("setup.{i}"),
                "one shell line per entry: split it in several entries".into(),
            );
        }
    }
    if c.signal_lead == 0 || c.signal_lead > 65535 {
        push(
            "signal_lead",
            "`signal_lead` must be between 1 and 65535 seconds".into(),
        );
    } else if let Some((t, Some(secs))) = limit
        && u64::from(c.signal_lead) >= secs
    {
        push(
            "signal_lead",
            format!(
                "the warning {} s before the end comes before the job starts: the time limit `{t}` is {secs} s",
                c.signal_lead
            ),
        );
    }
    if c.qlab.as_deref() == Some("") {
        push(
            "qlab",
            "`qlab` names the binary the job runs; it cannot be empty".into(),
        );
    }
    out
}

impl Config {
    /// The `[cluster]` section as written (no override applied): its `backend` is the sweep's.
    pub fn cluster(&self) -> ClusterSection {
        from_table(self.cluster.clone())
    }

    /// The cluster settings of one cell: `[cluster]` patched by every matching override, in order.
    pub fn cell_cluster(&self, model: &str, dataset: &str) -> ClusterSection {
        let mut table = self.cluster.clone();
        for (_, o) in self.matching_overrides(model, dataset) {
            table.extend(o.cluster.clone());
        }
        from_table(table)
    }

    /// Where a cell's cluster `key` was set: the last matching override that sets it, else `[cluster]`.
    pub fn cluster_key_place(&self, model: &str, dataset: &str, key: &str) -> String {
        let overrides: Vec<usize> = self
            .matching_overrides(model, dataset)
            .filter(|(_, o)| o.cluster.contains_key(key))
            .map(|(i, _)| i)
            .collect();
        match overrides.last() {
            Some(i) => format!("override.{i}.cluster.{key}"),
            None if self.spans.get(&format!("cluster.{key}")).is_some() => format!("cluster.{key}"),
            None => "cluster".into(),
        }
    }
}

/// Check `[cluster]` and every override's cluster table (as merged into the cells it matches).
pub(super) fn validate(config: &Config, errors: &mut Vec<Diagnostic>) {
    let base = check(&config.cluster());
    for (key, msg) in &base {
        let mut place = format!("cluster.{key}");
        if config.spans.get(&place).is_none() && key == "signal_lead" {
            // The default lead against a short time limit: the limit is what was written.
            place = "cluster.time".into();
        }
        errors.push(config.diagnostic(&place, msg.clone()));
    }
    for (i, o) in config.overrides.iter().enumerate() {
        if o.cluster.contains_key("backend") {
            errors.push(config.diagnostic(
                &format!("override.{i}.cluster.backend"),
                "`backend` is the whole sweep's: set it in [cluster], not in an override",
            ));
        }
    }
    let mut reported = std::collections::HashSet::new();
    for (m, d) in config.cells() {
        for (key, msg) in check(&config.cell_cluster(&m.id, &d.id)) {
            if base.contains(&(key.clone(), msg.clone())) {
                continue;
            }
            let top = key.split('.').next().unwrap_or(&key);
            let place = config.cluster_key_place(&m.id, &d.id, top);
            let place = match place.strip_suffix(top) {
                Some(prefix) => format!("{prefix}{key}"),
                None => place,
            };
            if reported.insert(place.clone()) {
                errors.push(config.diagnostic(&place, format!("{msg} (cell {} x {})", m.id, d.id)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const BASE: &str = "[sweep]\nname = \"t\"\n[[model]]\nid = \"m\"\npath = \"m.gguf\"\n\
        [[model]]\nid = \"big\"\npath = \"b.gguf\"\n\
        [[dataset]]\nid = \"d\"\npath = \"d.jsonl\"\ntemplate = \"{q}### Response:\\n{a}\"\n\
        [matrix]\nmodels = [\"m\", \"big\"]\ndatasets = [\"d\"]\n";

    fn load(extra: &str) -> Result<Config, String> {
        Config::from_source(Path::new("t.toml"), format!("{BASE}{extra}"))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn time_limits_in_every_slurm_form() {
        assert_eq!(time_limit_secs("30"), Some(1800));
        assert_eq!(time_limit_secs("5:30"), Some(330));
        assert_eq!(time_limit_secs("01:00:00"), Some(3600));
        assert_eq!(time_limit_secs("1-2"), Some(93600));
        assert_eq!(time_limit_secs("1-00:30"), Some(88200));
        assert_eq!(time_limit_secs("2-00:00:10"), Some(172810));
        for bad in ["", "1h", "1:2:3:4", "-5", "1-", "1-2:3:4:5", "a:b"] {
            assert_eq!(time_limit_secs(bad), None, "{bad}");
        }
    }

    #[test]
    fn defaults_and_overrides_per_model() {
        let c = load(
            "[cluster]\nbackend = \"slurm\"\npartition = \"gpu\"\ntime = \"04:00:00\"\nmem = \"32G\"\n\
             [[override]]\nmodel = \"big\"\ncluster = { mem = \"64G\", time = \"08:00:00\" }\n",
        )
        .unwrap();
        assert_eq!(c.cluster().backend, BackendKind::Slurm);
        assert_eq!(c.cluster().signal_lead, 120);
        assert!(c.cluster().requeue);
        let small = c.cell_cluster("m", "d");
        let big = c.cell_cluster("big", "d");
        assert_eq!(
            (small.mem.as_deref(), small.partition.as_deref()),
            (Some("32G"), Some("gpu"))
        );
        assert_eq!(
            (big.mem.as_deref(), big.time.as_deref()),
            (Some("64G"), Some("08:00:00"))
        );
        assert_eq!(
            c.cluster_key_place("big", "d", "mem"),
            "override.0.cluster.mem"
        );
        assert_eq!(c.cluster_key_place("m", "d", "mem"), "cluster.mem");
        assert_eq!(c.cluster_key_place("m", "d", "qos"), "cluster");
        assert_eq!(load("").unwrap().cluster().backend, BackendKind::Local);
    }

    #[test]
    fn every_key_is_checked_with_its_place() {
        let err = load(
            "[cluster]\nbackend = \"slurm\"\npartition = \"gpu partition\"\ntime = \"2h\"\ngpus = 1\n\
             gres = \"gpu:1\"\nmem = \"lots\"\ncpus_per_task = 0\nsbatch_args = [\"--constraint=a100\", \"--output=x\", \"nodash\"]\n\
             signal_lead = 0\n",
        )
        .unwrap_err();
        for expected in [
            "t.toml:18:13: `gpu partition`: expected a SLURM partition name",
            "t.toml:19:8: `2h`: expected a SLURM time limit",
            "t.toml:21:8: `gres` and `gpus` both ask for GPUs",
            "t.toml:22:7: `lots`: expected megabytes",
            "t.toml:23:17: `cpus_per_task` must be at least 1",
            "t.toml:24:37: qlab writes `--output` itself",
            "t.toml:24:51: `nodash`: expected one sbatch option",
            "t.toml:25:15: `signal_lead` must be between 1 and 65535",
        ] {
            assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
        }
        let err = load("[cluster]\nbackend = \"pbs\"\n").unwrap_err();
        assert!(
            err.contains("t.toml:17:11: unknown variant `pbs`, expected `local` or `slurm`"),
            "{err}"
        );
        let err = load("[cluster]\npartitions = \"gpu\"\n").unwrap_err();
        assert!(
            err.contains("t.toml:17:1: unknown field `partitions`"),
            "{err}"
        );
        let err = load("[cluster]\ntime = \"5\"\nsignal_lead = 300\n").unwrap_err();
        assert!(
            err.contains(
                "t.toml:18:15: the warning 300 s before the end comes before the job starts"
            ),
            "{err}"
        );
    }

    #[test]
    fn an_override_is_blamed_for_what_it_sets() {
        let err = load(
            "[cluster]\ntime = \"10\"\n[[override]]\nmodel = \"big\"\ncluster = { mem = \"9X\", backend = \"slurm\" }\n",
        )
        .unwrap_err();
        assert!(
            err.contains("t.toml:20:19: `9X`: expected megabytes"),
            "{err}"
        );
        assert!(err.contains("(cell big x d)"), "{err}");
        assert!(
            err.contains("t.toml:20:35: `backend` is the whole sweep's"),
            "{err}"
        );
    }
}
