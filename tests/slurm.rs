//! The SLURM backend against a real cluster (scripts/slurm-local.sh: munged, slurmctld and slurmd on this
//! machine; CI starts it and sets QLAB_TEST_SLURM=1). Without one each test prints why it was skipped.
//!
//! Tiny runs of the Llama fixture: a 2 x 2 sweep submitted as four jobs (a second submission while they are
//! queued submits nothing; `qlab status --json` and the dashboard show their states and ids) ends with the
//! adapters of a local run; one job warned with SIGUSR1 requeues itself and resumes, is cancelled from the
//! dashboard (C, then y) and resubmitted, and still ends with the local adapter and a gap-free metrics log; `--dry-run`, sbatch
//! refusing a partition, sbatch missing, squeue unreachable, and a job that dies before its marker.

#[allow(dead_code)] // these tests use only the tmux helper
mod common;

use common::tiny_word_model;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use qlab::sweep::events::RunEvent;
use qlab::sweep::metrics_log::read_events;
use serde_json::Value;

/// Whether the SLURM tests run; otherwise a line says why `test` was skipped.
fn slurm_or_skip(test: &str) -> bool {
    if std::env::var("QLAB_TEST_SLURM").is_ok_and(|v| v == "1") {
        return true;
    }
    let _ = writeln!(
        std::io::stderr(),
        "skipped {test}: set QLAB_TEST_SLURM=1 with a running SLURM (`eval \"$(scripts/slurm-local.sh start)\"` \
         as root starts one on this machine; CI does this) to test the SLURM backend against a real cluster"
    );
    false
}

/// A sweep in `dir/t.toml`: `models` (each the tiny Llama fixture) x `datasets` (id, rows of sums), batch 2,
/// one epoch, a checkpoint every 2 steps; `extra` is appended (a `[cluster]` section, say).
fn sweep(dir: &Path, models: &[&str], datasets: &[(&str, usize)], extra: &str) {
    tiny_word_model(dir);
    let mut toml = "[sweep]\nname = \"t\"\ndevice = \"cpu\"\n".to_string();
    for m in models {
        toml += &format!("[[model]]\nid = \"{m}\"\npath = \"model\"\nquant = \"none\"\n");
    }
    for (k, (d, rows)) in datasets.iter().enumerate() {
        let data: Vec<String> = (0..*rows)
            .map(|i| serde_json::json!({"q": format!("{} plus {}", (i + k) % 9, i % 7), "a": format!("{}", (i + k) % 9 + i % 7)}).to_string())
            .collect();
        std::fs::write(dir.join(format!("{d}.jsonl")), data.join("\n")).unwrap();
        toml += &format!(
            "[[dataset]]\nid = \"{d}\"\npath = \"{d}.jsonl\"\ntemplate = \"Q : {{q}} A : {{a}}\"\ncompletion_marker = \"A : \"\n"
        );
    }
    let list = |ids: Vec<&str>| {
        ids.iter()
            .map(|i| format!("\"{i}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    toml += &format!(
        "[lora]\nr = 4\nalpha = 8\n[train]\nlr = 1e-2\nbatch_size = 2\ngrad_accum = 1\nmax_seq_len = 32\nepochs = 1\n\
         eval_at_epochs = [1]\ncheckpoint_every = 2\n[matrix]\nmodels = [{}]\ndatasets = [{}]\n{extra}",
        list(models.to_vec()),
        list(datasets.iter().map(|d| d.0).collect())
    );
    std::fs::write(dir.join("t.toml"), toml).unwrap();
}

const SLURM: &str = "[cluster]\nbackend = \"slurm\"\ncpus_per_task = 1\nmem = \"900M\"\n";

fn qlab(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qlab"))
        .current_dir(dir)
        .args(args)
        .env("QLAB_OFFLINE", "1")
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let out = qlab(dir, args);
    assert!(out.status.success(), "qlab {args:?}:\n{}", text(&out));
    text(&out)
}

/// `qlab status --json` rows.
fn status(dir: &Path) -> Vec<Value> {
    let out = qlab(dir, &["status", "t.toml", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice::<Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn slurm_state(row: &Value) -> Option<String> {
    row["slurm"]["state"].as_str().map(str::to_owned)
}

fn job_id(row: &Value) -> String {
    row["slurm"]["job_id"].as_str().unwrap().to_owned()
}

fn run_dir(dir: &Path, id: &str) -> PathBuf {
    dir.join("runs/t").join(id)
}

fn adapter(dir: &Path, id: &str) -> Vec<u8> {
    std::fs::read(run_dir(dir, id).join("stages/e1/adapter/adapter_model.safetensors")).unwrap()
}

fn steps(dir: &Path, id: &str) -> Vec<u64> {
    read_events(&run_dir(dir, id).join("metrics.jsonl"))
        .unwrap()
        .into_iter()
        .filter_map(|e| match e.event {
            RunEvent::Step(m) => Some(m.step),
            _ => None,
        })
        .collect()
}

fn slurm(tool: &str, args: &[&str]) {
    let out = Command::new(tool).args(args).output().unwrap();
    assert!(out.status.success(), "{tool} {args:?}: {}", text(&out));
}

#[test]
fn a_two_by_two_sweep_runs_as_jobs_and_ends_with_the_local_adapters() {
    if !slurm_or_skip("a_two_by_two_sweep_runs_as_jobs_and_ends_with_the_local_adapters") {
        return;
    }
    let (cluster, local) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let cells = [("x", 8), ("y", 10)];
    sweep(cluster.path(), &["a", "b"], &cells, SLURM);
    sweep(local.path(), &["a", "b"], &cells, "");
    let first = ok(cluster.path(), &["run", "t.toml", "--no-eval"]);
    assert_eq!(first.matches("submitted job").count(), 4, "{first}");
    // Submitted again while queued: nothing twice.
    let second = ok(cluster.path(), &["run", "t.toml", "--no-eval"]);
    assert!(second.contains("0 job(s) submitted"), "{second}");
    let mut seen = std::collections::BTreeSet::new();
    let tmux = common::Tmux::available().then(|| {
        common::Tmux::start(
            "slurm",
            &format!(
                "cd {} && SLURM_CONF={} {} tui t.toml",
                cluster.path().display(),
                std::env::var("SLURM_CONF").unwrap_or_default(),
                env!("CARGO_BIN_EXE_qlab")
            ),
            (120, 40),
        )
    });
    wait_for("every job to complete", Duration::from_secs(240), || {
        let rows = status(cluster.path());
        for r in &rows {
            seen.extend(slurm_state(r));
            assert!(r["slurm"]["job_id"].is_string(), "{r}");
        }
        rows.iter()
            .all(|r| r["state"] == "done" && slurm_state(r).as_deref() == Some("COMPLETED"))
    });
    assert!(
        seen.contains("RUNNING") || seen.contains("PENDING"),
        "{seen:?}"
    );
    let rows = status(cluster.path());
    if let Some(tmux) = &tmux {
        let id = job_id(&rows[0]);
        tmux.wait_for(
            "job states on the dashboard",
            Duration::from_secs(30),
            |s| s.contains(&format!("job {id} COMPLETED")),
        );
    }
    let again = ok(cluster.path(), &["run", "t.toml", "--no-eval"]);
    assert_eq!(again.matches("done, skipped").count(), 4, "{again}");
    ok(local.path(), &["run", "t.toml", "--no-eval"]);
    for r in &rows {
        let id = r["id"].as_str().unwrap();
        assert_eq!(
            adapter(cluster.path(), id),
            adapter(local.path(), id),
            "{id}"
        );
        let script =
            std::fs::read_to_string(run_dir(cluster.path(), id).join("job.sbatch")).unwrap();
        assert!(script.contains("#SBATCH --mem=900M\n"), "{script}");
        let marker: Value = serde_json::from_str(
            &std::fs::read_to_string(run_dir(cluster.path(), id).join("node.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(marker["job_id"].as_str(), Some(job_id(r).as_str()));
    }
}

#[test]
fn a_warned_job_requeues_itself_and_a_cancelled_one_resumes_to_the_local_adapter() {
    if !slurm_or_skip(
        "a_warned_job_requeues_itself_and_a_cancelled_one_resumes_to_the_local_adapter",
    ) {
        return;
    }
    let (cluster, local) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // 600 steps: several seconds of training, time to warn and cancel it midway.
    let cells = [("x", 1200)];
    sweep(cluster.path(), &["a"], &cells, SLURM);
    sweep(local.path(), &["a"], &cells, "");
    ok(cluster.path(), &["run", "t.toml", "--no-eval"]);
    let row = status(cluster.path()).remove(0);
    let (id, job) = (row["id"].as_str().unwrap().to_owned(), job_id(&row));
    let dir = cluster.path().to_owned();
    wait_for("a few steps", Duration::from_secs(120), || {
        steps(&dir, &id).len() >= 3
    });
    // SLURM's time-limit warning, sent now: checkpoint, requeue, exit.
    slurm("scancel", &["--signal=USR1", "--batch", &job]);
    wait_for("the job to requeue itself", Duration::from_secs(60), || {
        let r = status(&dir).remove(0);
        r["state"] == "interrupted" && slurm_state(&r).as_deref() == Some("PENDING")
    });
    let warned_at = *steps(&dir, &id).last().unwrap();
    assert!(warned_at < 300, "{warned_at}");
    // SLURM holds a requeued job back for a while; let it start in a few seconds. Not at once: a job restarted
    // within a second of its requeue can be killed by slurmd as "Job credential revoked" (seen once here, the
    // backfill scheduler starting it 0.13 s after the update) and then never trains on.
    slurm(
        "scontrol",
        &["update", &format!("JobId={job}"), "StartTime=now+5"],
    );
    wait_for(
        "the requeued job to train on",
        Duration::from_secs(120),
        || steps(&dir, &id).len() as u64 >= warned_at + 3,
    );
    let marker: Value = serde_json::from_str(
        &std::fs::read_to_string(run_dir(&dir, &id).join("node.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        (marker["job_id"].as_str(), marker["restarts"].as_u64()),
        (Some(job.as_str()), Some(1))
    );
    // Cancelled (scancel's SIGTERM: checkpoint and stop) from the dashboard's C key and its y/n question, or
    // with scancel where tmux is missing; the job stays cancelled until submitted again.
    if common::Tmux::available() {
        let tmux = common::Tmux::start(
            "slurm-cancel",
            &format!(
                "cd {} && SLURM_CONF={} {} tui t.toml",
                dir.display(),
                std::env::var("SLURM_CONF").unwrap_or_default(),
                env!("CARGO_BIN_EXE_qlab")
            ),
            (120, 40),
        );
        tmux.wait_for(
            "the running job on the dashboard",
            Duration::from_secs(30),
            |s| s.contains(&format!("#{job} RUNNING")),
        );
        tmux.send("C");
        tmux.wait_for("the question", Duration::from_secs(10), |s| {
            s.contains(&format!("Cancel SLURM job {job}"))
        });
        tmux.send("y");
        tmux.wait_for("the cancellation", Duration::from_secs(30), |s| {
            s.contains(&format!("cancelled job {job}"))
        });
    } else {
        slurm("scancel", &[&job]);
    }
    wait_for("the cancelled job", Duration::from_secs(60), || {
        let r = status(&dir).remove(0);
        r["state"] == "interrupted" && slurm_state(&r).as_deref() == Some("CANCELLED")
    });
    let resubmitted = ok(&dir, &["run", "t.toml", "--no-eval"]);
    assert!(
        resubmitted.contains("submitted job") && resubmitted.contains("resume from step"),
        "{resubmitted}"
    );
    wait_for("the run to finish", Duration::from_secs(240), || {
        status(&dir)[0]["state"] == "done"
    });
    let total = status(&dir)[0]["total_steps"].as_u64().unwrap();
    assert_eq!(
        steps(&dir, &id),
        (1..=total).collect::<Vec<_>>(),
        "every step once"
    );
    let record: Value = serde_json::from_str(
        &std::fs::read_to_string(run_dir(&dir, &id).join("job.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(record["previous"], serde_json::json!([job]));
    ok(local.path(), &["run", "t.toml", "--no-eval"]);
    assert_eq!(adapter(&dir, &id), adapter(local.path(), &id));
}

#[test]
fn dry_run_and_the_errors_a_user_must_get() {
    if !slurm_or_skip("dry_run_and_the_errors_a_user_must_get") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let gpus = format!("{SLURM}gpus = 2\npartition = \"nope\"\nsetup = [\"module load cuda\"]\n");
    sweep(dir.path(), &["a"], &[("x", 8)], &gpus);
    let dry = ok(dir.path(), &["run", "t.toml", "--dry-run"]);
    for line in [
        "#SBATCH --gpus=2\n",
        "#SBATCH --partition=nope\n",
        "#SBATCH --signal=B:USR1@120\n",
        "module load cuda\nexec ",
        "sbatch --parsable ",
    ] {
        assert!(dry.contains(line), "{line:?} in:\n{dry}");
    }
    assert!(
        !dir.path().join("runs").exists(),
        "a dry run writes nothing"
    );

    // sbatch refuses the partition: SLURM's words and the config line.
    sweep(
        dir.path(),
        &["a"],
        &[("x", 8)],
        &format!("{SLURM}partition = \"nope\"\n"),
    );
    let out = qlab(dir.path(), &["run", "t.toml"]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(
        said.contains("sbatch refused: invalid partition specified: nope"),
        "{said}"
    );
    assert!(
        said.contains("t.toml:31:13: the `partition` setting that sbatch refused"),
        "{said}"
    );

    // No sbatch on PATH.
    let out = Command::new(env!("CARGO_BIN_EXE_qlab"))
        .current_dir(dir.path())
        .args(["run", "t.toml"])
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    assert!(
        text(&out).contains("`sbatch` is not on PATH"),
        "{}",
        text(&out)
    );

    // A job that dies before its first write on the node (here: no qlab there).
    sweep(
        dir.path(),
        &["a"],
        &[("x", 8)],
        &format!("{SLURM}qlab = \"/nonexistent/qlab\"\n"),
    );
    ok(dir.path(), &["run", "t.toml"]);
    wait_for("the job to fail", Duration::from_secs(60), || {
        slurm_state(&status(dir.path())[0]).as_deref() == Some("FAILED")
    });
    let table = ok(dir.path(), &["status", "t.toml"]);
    assert!(table.contains("ended before writing node.json: is the runs directory on a filesystem the nodes can see?"), "{table}");

    // squeue unreachable (a controller that does not answer): the recorded job ids, marked stale; no crash.
    let down = dir.path().join("down.conf");
    std::fs::write(
        &down,
        "ClusterName=down\nSlurmctldHost=localhost\nSlurmctldPort=6999\nMessageTimeout=1\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_qlab"))
        .current_dir(dir.path())
        .args(["status", "t.toml", "--json"])
        .env("SLURM_CONF", &down)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows[0]["slurm"]["stale"], true, "{rows}");
    assert!(rows[0]["slurm"]["job_id"].is_string(), "{rows}");
    assert!(
        text(&out).contains("the SLURM states below are stale"),
        "{}",
        text(&out)
    );
}
