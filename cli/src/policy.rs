//! `mapsentry policy`: check policy files, replay recorded events against them (what-if), and
//! print the CRDs.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    fs,
    io::{self, BufRead, BufReader, Write},
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};
use mapsentry_policy::{
    Action, Aggregator, EvalContext, EventLine, Loaded, Match, MmapEvent, Mode, PodContext, Policy,
    PolicySet, alert, crd::crds_yaml, load_str, strongest,
};
use serde_json::{Value, json};

use crate::output::{Format, text_line};

#[derive(Debug, clap::Args)]
pub struct PolicyArgs {
    #[command(subcommand)]
    command: PolicyCommand,
}

#[derive(Debug, clap::Subcommand)]
enum PolicyCommand {
    /// Validate policy files or directories (*.yaml, *.yml); prints every problem with its file,
    /// document and field path; exit status 1 on any problem.
    Check {
        /// Files or directories (searched recursively).
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
    },
    /// Replay recorded event lines (`mapsentry run --output json`) against policies and print
    /// which calls would raise alerts, be killed or be denied.
    Test {
        /// Policy file or directory (repeatable).
        #[arg(long = "policy", required = true, value_name = "PATH")]
        policies: Vec<PathBuf>,
        /// JSON lines as `run --output json` prints them; `-` reads stdin. Lines of other kinds
        /// than `event` are skipped.
        #[arg(long, value_name = "FILE.jsonl")]
        events: PathBuf,
        /// text: one line per matching call and a summary; json: alert lines, then a summary line.
        #[arg(long, value_enum, default_value = "text")]
        output: Format,
        /// Alerts for one (pod, policy, rule) within this many seconds are one alert with a
        /// count (json output); 0 reports every match.
        #[arg(long, default_value_t = 60, value_name = "SECONDS")]
        dedup_window: u64,
    },
    /// Print the custom resource definitions of both policy kinds, as YAML.
    Crds,
}

pub fn run(args: PolicyArgs) -> anyhow::Result<()> {
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let result = match args.command {
        PolicyCommand::Check { paths } => check(&paths, &mut out),
        PolicyCommand::Test {
            policies,
            events,
            output,
            dedup_window,
        } => test(
            &policies,
            &events,
            output,
            dedup_window.saturating_mul(1_000_000_000),
            &mut out,
        ),
        PolicyCommand::Crds => write!(out, "{}", crds_yaml()).context("writing to stdout"),
    };
    out.flush().context("writing to stdout")?;
    result
}

/// A policy that loaded, and where from.
#[derive(Debug)]
struct Source {
    file: PathBuf,
    loaded: Loaded,
}

/// Everything found in some paths: the policies that loaded, and one line per problem.
#[derive(Debug, Default)]
struct Found {
    files: usize,
    policies: Vec<Source>,
    problems: Vec<String>,
}

/// Load every policy file under `paths`. Directories are searched recursively for *.yaml and
/// *.yml; a file named on the command line is read whatever its name.
fn load_paths(paths: &[PathBuf]) -> Found {
    let mut found = Found::default();
    for path in paths {
        let files = match policy_files(path) {
            Ok(files) if files.is_empty() => {
                found.problems.push(format!(
                    "{}: no policy files (*.yaml, *.yml) in this directory",
                    path.display()
                ));
                continue;
            }
            Ok(files) => files,
            Err(error) => {
                found
                    .problems
                    .push(format!("{}: {error:#}", path.display()));
                continue;
            }
        };
        for file in files {
            found.files += 1;
            let text = match fs::read_to_string(&file) {
                Ok(text) => text,
                Err(error) => {
                    found
                        .problems
                        .push(format!("{}: cannot read: {error}", file.display()));
                    continue;
                }
            };
            let outcome = load_str(&text);
            for error in &outcome.errors {
                found.problems.extend(problem_lines(&file, error));
            }
            found
                .policies
                .extend(outcome.policies.into_iter().map(|loaded| Source {
                    file: file.clone(),
                    loaded,
                }));
        }
    }
    let mut first: HashMap<String, &Source> = HashMap::new();
    for source in &found.policies {
        let id = source.loaded.compiled.id.to_string();
        if let Some(earlier) = first.get(&id) {
            found.problems.push(format!(
                "{}: document {}: {} {id:?} is also defined in {} document {}; each policy may be defined once",
                source.file.display(),
                source.loaded.document,
                source.loaded.policy.kind(),
                earlier.file.display(),
                earlier.loaded.document
            ));
        } else {
            first.insert(id, source);
        }
    }
    found
}

fn problem_lines(file: &Path, error: &mapsentry_policy::LoadError) -> Vec<String> {
    match error {
        mapsentry_policy::LoadError::Syntax { document, message } => {
            vec![format!(
                "{}: document {document}: not valid YAML: {message}",
                file.display()
            )]
        }
        mapsentry_policy::LoadError::Invalid {
            document,
            kind,
            name,
            problems,
        } => {
            let object = match (kind, name) {
                (Some(kind), Some(name)) => format!(" ({kind} {name:?})"),
                (Some(kind), None) => format!(" ({kind})"),
                _ => String::new(),
            };
            problems
                .iter()
                .map(|p| format!("{}: document {document}{object}: {p}", file.display()))
                .collect()
        }
    }
}

fn policy_files(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let meta = fs::metadata(path).context("cannot read")?;
    if !meta.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files = Vec::new();
    let mut pending = vec![path.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))? {
            let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

fn check(paths: &[PathBuf], out: &mut impl Write) -> anyhow::Result<()> {
    let found = load_paths(paths);
    if !found.problems.is_empty() {
        for line in &found.problems {
            writeln!(out, "{line}")?;
        }
        out.flush()?;
        bail!("{} problem(s); policies not valid", found.problems.len());
    }
    for source in &found.policies {
        writeln!(out, "{}", describe(source))?;
    }
    let rules: usize = found
        .policies
        .iter()
        .map(|s| s.loaded.policy.rules().len())
        .sum();
    writeln!(
        out,
        "ok: {} policies, {rules} rules in {} file(s)",
        found.policies.len(),
        found.files
    )?;
    Ok(())
}

/// `FILE: document N: MmapPolicy shop/no-wx (Enforce, 2 rules)`.
fn describe(source: &Source) -> String {
    let policy = &source.loaded.policy;
    let mut line = format!(
        "{}: document {}: {} {} ({:?}, {} rule(s)",
        source.file.display(),
        source.loaded.document,
        policy.kind(),
        source.loaded.compiled.id,
        policy.mode(),
        policy.rules().len()
    );
    if let Policy::Cluster(p) = policy
        && p.spec.host_processes
    {
        line.push_str(", host processes too");
    }
    line.push(')');
    line
}

/// Tallies of a replay.
#[derive(Debug, Default)]
struct Replay {
    lines: u64,
    events: u64,
    skipped: u64,
    matched: u64,
    /// Calls by what would be carried out: alert, kill, deny.
    outcomes: BTreeMap<&'static str, u64>,
    /// Matches by (policy, rule).
    by_rule: BTreeMap<(String, String), u64>,
}

fn test(
    policies: &[PathBuf],
    events: &Path,
    format: Format,
    window_ns: u64,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let found = load_paths(policies);
    if !found.problems.is_empty() {
        for line in &found.problems {
            tracing::error!(target: mapsentry_service::STATUS_TARGET, "{line}");
        }
        bail!(
            "{} problem(s) in the policies; run `mapsentry policy check` for details",
            found.problems.len()
        );
    }
    let set = PolicySet::new(
        found
            .policies
            .into_iter()
            .map(|s| s.loaded.compiled)
            .collect(),
    )?;
    let reader: Box<dyn BufRead> = if events.as_os_str() == "-" {
        Box::new(io::stdin().lock())
    } else {
        Box::new(BufReader::new(
            fs::File::open(events).with_context(|| format!("cannot open {}", events.display()))?,
        ))
    };
    let mut replay = Replay::default();
    let mut aggregator = Aggregator::new(window_ns, alert::DEFAULT_MAX_KEYS);
    let mut matches = Vec::new();
    for (index, line) in reader.lines().enumerate() {
        let number = index + 1;
        let line = line.with_context(|| format!("{}:{number}: cannot read", events.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        replay.lines += 1;
        let Some((event, ctx)) =
            parse_line(&line).with_context(|| format!("{}:{number}", events.display()))?
        else {
            replay.skipped += 1;
            continue;
        };
        replay.events += 1;
        matches.clear();
        set.evaluate_into(&event, &ctx, &mut matches);
        let Some(outcome) = strongest(&matches) else {
            continue;
        };
        replay.matched += 1;
        *replay.outcomes.entry(outcome.as_str()).or_default() += 1;
        for m in &matches {
            *replay
                .by_rule
                .entry((m.policy.to_string(), m.rule.to_owned()))
                .or_default() += 1;
        }
        match format {
            Format::Text => writeln!(
                out,
                "{}",
                what_if_line(number, outcome, &matches, &event, &ctx)
            )?,
            Format::Json => {
                for m in &matches {
                    if let Some(alert) = aggregator.record(m, &event, &ctx) {
                        serde_json::to_writer(&mut *out, &alert)?;
                        out.write_all(b"\n")?;
                    }
                }
            }
        }
    }
    match format {
        Format::Json => {
            for alert in aggregator.drain() {
                serde_json::to_writer(&mut *out, &alert)?;
                out.write_all(b"\n")?;
            }
            let by_rule: Vec<Value> =
                replay.by_rule.iter().map(|((policy, rule), count)| json!({"policy": policy, "rule": rule, "count": count})).collect();
            let summary = json!({
                "kind": "summary",
                "lines": replay.lines,
                "events": replay.events,
                "skipped": replay.skipped,
                "matched": replay.matched,
                "alert": replay.outcomes.get("alert").copied().unwrap_or(0),
                "kill": replay.outcomes.get("kill").copied().unwrap_or(0),
                "deny": replay.outcomes.get("deny").copied().unwrap_or(0),
                "rules": by_rule,
            });
            writeln!(out, "{summary}")?;
        }
        Format::Text => {
            writeln!(
                out,
                "{} event(s) replayed ({} other line(s) skipped): {} matched; would alert on {}, kill {}, deny {}",
                replay.events,
                replay.skipped,
                replay.matched,
                replay.outcomes.get("alert").copied().unwrap_or(0),
                replay.outcomes.get("kill").copied().unwrap_or(0),
                replay.outcomes.get("deny").copied().unwrap_or(0),
            )?;
            for ((policy, rule), count) in &replay.by_rule {
                writeln!(out, "  {policy} {rule}: {count}")?;
            }
        }
    }
    Ok(())
}

/// `line 12: KILL app[7/7] ... <- shop/no-wx wx (enforce: kill); audit/x y (audit: deny)`.
fn what_if_line(
    number: usize,
    outcome: Action,
    matches: &[Match<'_>],
    event: &MmapEvent,
    ctx: &EvalContext,
) -> String {
    let mut line = format!("line {number}: {} ", outcome.as_str().to_uppercase());
    if let Some(w) = &ctx.workload {
        let _ = write!(line, "{}/{}", w.namespace, w.pod);
        if let Some(container) = &w.container {
            let _ = write!(line, "/{container}");
        }
        line.push(' ');
    } else {
        line.push_str("(host) ");
    }
    line.push_str(&text_line(event));
    line.push_str(" <- ");
    let reasons: Vec<String> = matches
        .iter()
        .map(|m| {
            let audit = if m.mode == Mode::Audit {
                " [audit: not enforced]"
            } else {
                ""
            };
            format!("{} rule {}: {}{audit}", m.policy, m.rule, m.action.as_str())
        })
        .collect();
    line.push_str(&reasons.join("; "));
    line
}

/// The event of an `event` line and its caller's context; None for lines of other kinds.
fn parse_line(line: &str) -> anyhow::Result<Option<(MmapEvent, EvalContext)>> {
    let value: Value = serde_json::from_str(line).context("not a JSON object")?;
    let Some(kind) = value.get("kind") else {
        bail!("no \"kind\": not a mapsentry JSON line")
    };
    if kind != "event" {
        return Ok(None);
    }
    let ctx = context_of(&value);
    let EventLine::Event { event, .. } =
        serde_json::from_value(value).context("not a valid event line")?;
    Ok(Some((event, ctx)))
}

/// The caller's context from an event line's `namespace`, `pod`, `container`, `executable` and
/// `k8s` (`image`, `labels`, `namespace_labels`) fields; a line without a namespace is a host
/// process.
fn context_of(line: &Value) -> EvalContext {
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
    let labels = |v: Option<&Value>| -> BTreeMap<String, String> {
        v.and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default()
    };
    let k8s = line.get("k8s");
    let workload = text(line.get("namespace")).map(|namespace| PodContext {
        namespace,
        pod: text(line.get("pod")).unwrap_or_default(),
        container: text(line.get("container")),
        image: text(k8s.and_then(|k| k.get("image"))),
        pod_labels: labels(k8s.and_then(|k| k.get("labels"))),
        namespace_labels: labels(k8s.and_then(|k| k.get("namespace_labels"))),
    });
    EvalContext {
        executable: text(line.get("executable")).or_else(|| text(line.get("exe"))),
        workload,
    }
}

#[cfg(test)]
mod tests;
