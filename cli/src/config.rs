//! Configuration files, and `carrier config`: what each setting is and where it came from.
//!
//! A file's keys are the flags' long names (`batch-max = 256`, `nats-url = "..."`); a key at the
//! top applies to every subcommand that has that flag, a key under `[run]` (or `[demo]`,
//! `[status]`, ...) to that subcommand only, and wins over the top. The file's values become the
//! flags' defaults before the command line is parsed, so the order is the one clap already
//! keeps: a flag, then its environment variable, then the file, then the built-in default. Each
//! value is checked by its flag's own parser when the file is read, so a bad value names the
//! file, the line and the key, not a flag the user never typed.
//!
//! Which file: `--config FILE`, else `CARRIER_CONFIG`, else `./carrier.toml`, else
//! `$XDG_CONFIG_HOME/carrier/config.toml` (`~/.config/carrier/config.toml`); the first two must
//! exist, the others are read when they do. One file is read, never a merge of several.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::OnceLock;

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, ColorChoice, Command as ClapCommand};

/// Keys a file may not set: they are not settings.
const NOT_SETTINGS: [&str; 3] = ["help", "version", "config"];

/// What a secret's value prints as.
const MASK: &str = "********";

/// Arguments of `carrier config`.
#[derive(clap::Args)]
pub struct ConfigArgs {
    /// Print the settings as JSON (`{"command", "file", "settings": [{"key", "value",
    /// "source", "detail"}]}`) instead of TOML.
    #[arg(long)]
    json: bool,
    /// Print every setting of every subcommand, its environment variable and default, as a
    /// Markdown table (docs/configuration.md holds it).
    #[arg(long, conflicts_with = "json")]
    reference: bool,
    /// The command line to explain, without the binary's name (default: `run`), e.g.
    /// `carrier config run --batch-max 64`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "COMMAND LINE")]
    command_line: Vec<OsString>,
}

/// A configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file named by `--config` or `CARRIER_CONFIG`, or a default one, cannot be read.
    #[error("cannot read the configuration file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not TOML, or a key or value in it is not a setting.
    #[error("{path} line {line}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based.
        line: usize,
        /// What is wrong, naming the key.
        message: String,
    },
}

/// Where a file value was set: the command path (`""` for the top, `"run"`, ...) and the key.
#[derive(Clone, Debug)]
struct Origin {
    line: usize,
}

/// The command line definition with a file's values laid in, and what came from the file.
pub(crate) struct Layered {
    /// The definition without any file (for `--reference`).
    base: ClapCommand,
    /// The definition with the file's values as defaults.
    pub command: ClapCommand,
    file: Option<PathBuf>,
    /// (command path, argument id) → where in the file.
    origins: HashMap<(String, String), Origin>,
}

static LAYERED: OnceLock<Layered> = OnceLock::new();

/// Reads the configuration file the command line, the environment or the default paths name,
/// and lays its values into `command` as defaults.
pub(crate) fn layer(base: ClapCommand, argv: &[OsString]) -> Result<&'static Layered, ConfigError> {
    let mut layered = Layered { command: base.clone(), base, file: None, origins: HashMap::new() };
    if let Some(path) = file_to_read(argv) {
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read { path: path.clone(), source })?;
        let mut reader = FileReader { path: &path, text: &text, origins: HashMap::new() };
        layered.command = reader.apply(layered.command)?;
        layered.origins = reader.origins;
        layered.file = Some(path);
    }
    Ok(LAYERED.get_or_init(|| layered))
}

/// `--config FILE` / `--config=FILE` on the command line (before `--`), else `CARRIER_CONFIG`,
/// else the first default path that exists.
fn file_to_read(argv: &[OsString]) -> Option<PathBuf> {
    let mut args = argv.iter().skip(1);
    while let Some(arg) = args.next() {
        let Some(text) = arg.to_str() else { continue };
        if text == "--" {
            break;
        }
        if text == "--config" {
            // clap reports the missing value when it parses.
            return args.next().map(PathBuf::from);
        }
        if let Some(path) = text.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
    }
    if let Some(path) = std::env::var_os("CARRIER_CONFIG").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    default_paths().into_iter().find(|p| p.is_file())
}

/// `./<binary>.toml`, then `$XDG_CONFIG_HOME/<binary>/config.toml` (`~/.config/...`), named
/// after the running binary (`carrier.toml` for `carrier`).
fn default_paths() -> Vec<PathBuf> {
    let name = crate::binary_name();
    let mut paths = vec![PathBuf::from(format!("{name}.toml"))];
    let config_home = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".config")));
    if let Some(home) = config_home {
        paths.push(home.join(name).join("config.toml"));
    }
    paths
}

struct FileReader<'a> {
    path: &'a Path,
    text: &'a str,
    origins: HashMap<(String, String), Origin>,
}

impl FileReader<'_> {
    fn line_of(&self, span: Option<std::ops::Range<usize>>) -> usize {
        let offset = span.map_or(0, |s| s.start).min(self.text.len());
        self.text[..offset].matches('\n').count() + 1
    }

    fn invalid(&self, line: usize, message: String) -> ConfigError {
        ConfigError::Invalid { path: self.path.to_path_buf(), line, message }
    }

    fn apply(&mut self, mut command: ClapCommand) -> Result<ClapCommand, ConfigError> {
        let document = toml_edit::Document::parse(self.text).map_err(|e| {
            let line = self.line_of(e.span());
            self.invalid(line, format!("not valid TOML: {}", e.message().trim()))
        })?;
        let root = document.as_table();
        // The top's own flags (`log-format`) reach every subcommand when clap builds; a section
        // setting one gets a copy of its own, which clap then leaves in place.
        let globals: Vec<Arg> = command.get_arguments().filter(|a| a.is_global_set()).cloned().collect();
        // Top-level values first, then sections, so a section's value wins over the top's.
        let mut sections = Vec::new();
        for (name, item) in root.iter() {
            let line = self.line_of(root.get_key_value(name).and_then(|(k, _)| k.span()));
            if is_table(item) {
                sections.push((name.to_string(), line));
                continue;
            }
            command = self.set(command, "", name, item, line)?;
        }
        for (name, line) in sections {
            let Some(sub) = command.find_subcommand(&name) else {
                let known: Vec<String> = command.get_subcommands().map(|s| format!("[{}]", s.get_name())).collect();
                return Err(self.invalid(
                    line,
                    format!("unknown section [{name}]; sections are named after subcommands: {}", known.join(", ")),
                ));
            };
            let sub_name = sub.get_name().to_string();
            let Some(table) = root.get(&name).and_then(|i| i.as_table_like()) else { continue };
            let mut entries = Vec::new();
            for (key, item) in table.iter() {
                let line = self.line_of(table.get_key_value(key).and_then(|(k, _)| k.span()));
                if is_table(item) {
                    return Err(self.invalid(
                        line,
                        format!("[{name}.{key}]: sections are one level deep; put `{key}`'s settings under [{name}]"),
                    ));
                }
                entries.push((key.to_string(), item.clone(), line));
            }
            let mut failure = None;
            command = command.mut_subcommand(&sub_name, |mut sub| {
                for (key, item, line) in &entries {
                    let long = key.replace('_', "-");
                    let global = globals.iter().find(|a| a.get_long() == Some(long.as_str()));
                    if let Some(global) = global.filter(|g| sub.get_arguments().all(|a| a.get_id() != g.get_id())) {
                        sub = sub.arg(global.clone());
                    }
                    match self.set(sub, &sub_name, key, item, *line) {
                        Ok(next) => sub = next,
                        Err(e) => {
                            failure = Some(e);
                            return ClapCommand::new("unused");
                        }
                    }
                }
                sub
            });
            if let Some(e) = failure {
                return Err(e);
            }
        }
        Ok(command)
    }

    /// Sets `key` in `command` and every subcommand below it that has that flag.
    fn set(
        &mut self,
        command: ClapCommand,
        path: &str,
        key: &str,
        item: &toml_edit::Item,
        line: usize,
    ) -> Result<ClapCommand, ConfigError> {
        let long = key.replace('_', "-");
        let scope = if path.is_empty() { String::new() } else { format!(" in [{path}]") };
        if NOT_SETTINGS.contains(&long.as_str()) {
            let why = if long == "config" { "a file cannot name another file" } else { "not a setting" };
            return Err(self.invalid(line, format!("`{key}`{scope}: {why}")));
        }
        let mut found = Vec::new();
        collect_args(&command, &long, path, &mut found);
        if found.is_empty() {
            let mut known = BTreeMap::new();
            collect_longs(&command, &mut known);
            let known: Vec<&str> = known.keys().map(String::as_str).collect();
            let hint = match closest(&long, &known) {
                Some(near) => format!("did you mean `{near}`? "),
                None => String::new(),
            };
            return Err(self.invalid(
                line,
                format!("unknown key `{key}`{scope}; {hint}the settings here are: {}", known.join(", ")),
            ));
        }
        let values = match to_strings(item) {
            Ok(values) => values,
            Err(why) => return Err(self.invalid(line, format!("`{key}`{scope}: {why}"))),
        };
        for (_, arg) in &found {
            check(arg, &values)
                .map_err(|why| self.invalid(line, format!("`{key}` = {}{scope}: {why}", show(self.text, item))))?;
        }
        for (at, arg) in &found {
            self.origins.insert((at.clone(), arg.get_id().to_string()), Origin { line });
        }
        Ok(lay(command, &long, &values))
    }
}

/// The known key nearest to `key` by edit distance, when it is near enough to be a typo.
fn closest<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    fn distance(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut previous = row[0];
            row[0] = i + 1;
            for (j, cb) in b.iter().enumerate() {
                let here = row[j + 1];
                row[j + 1] = (previous + usize::from(ca != *cb)).min(row[j] + 1).min(here + 1);
                previous = here;
            }
        }
        row[b.len()]
    }
    known.iter().map(|k| (distance(key, k), *k)).filter(|(d, k)| *d <= 2.max(k.len() / 4)).min().map(|(_, k)| k)
}

fn is_table(item: &toml_edit::Item) -> bool {
    item.is_table() || item.as_value().is_some_and(|v| v.is_inline_table())
}

/// Every argument with long name `long` in `command` and below, with the command path it is at.
fn collect_args(command: &ClapCommand, long: &str, path: &str, found: &mut Vec<(String, Arg)>) {
    if let Some(arg) = command.get_arguments().find(|a| a.get_long() == Some(long)) {
        found.push((path.to_string(), arg.clone()));
    }
    for sub in command.get_subcommands() {
        let sub_path = if path.is_empty() { sub.get_name().to_string() } else { format!("{path} {}", sub.get_name()) };
        collect_args(sub, long, &sub_path, found);
    }
}

fn collect_longs(command: &ClapCommand, known: &mut BTreeMap<String, ()>) {
    for arg in command.get_arguments() {
        if let Some(long) = arg.get_long().filter(|l| !NOT_SETTINGS.contains(l)) {
            known.insert(long.to_string(), ());
        }
    }
    for sub in command.get_subcommands() {
        collect_longs(sub, known);
    }
}

/// Lays `values` in as the default of flag `long` in `command` and below.
fn lay(mut command: ClapCommand, long: &str, values: &[String]) -> ClapCommand {
    let id = command.get_arguments().find(|a| a.get_long() == Some(long)).map(|a| a.get_id().clone());
    if let Some(id) = id {
        let values = values.to_vec();
        command = command.mut_arg(id, move |arg| {
            // A secret set in a file must not show in --help's "[default: ...]".
            let secret = arg.is_hide_env_values_set();
            arg.default_values(values).required(false).hide_default_value(secret)
        });
    }
    let names: Vec<String> = command.get_subcommands().map(|s| s.get_name().to_string()).collect();
    for name in names {
        command = command.mut_subcommand(name, |sub| lay(sub, long, values));
    }
    command
}

/// A TOML value as the strings a command line would carry.
fn to_strings(item: &toml_edit::Item) -> Result<Vec<String>, String> {
    use toml_edit::Value;
    let scalar = |value: &Value| -> Result<String, String> {
        Ok(match value {
            Value::String(s) => s.value().clone(),
            Value::Integer(i) => i.value().to_string(),
            Value::Float(f) => f.value().to_string(),
            Value::Boolean(b) => b.value().to_string(),
            Value::Datetime(d) => d.value().to_string(),
            Value::Array(_) | Value::InlineTable(_) => return Err("a list may hold only plain values".to_string()),
        })
    };
    match item.as_value() {
        Some(Value::Array(array)) => array.iter().map(scalar).collect(),
        Some(value) => scalar(value).map(|v| vec![v]),
        None => Err("expected a value".to_string()),
    }
}

/// The value as the file spells it.
fn show(text: &str, item: &toml_edit::Item) -> String {
    item.span().and_then(|span| text.get(span)).unwrap_or_default().trim().to_string()
}

/// Runs `values` through `arg`'s own parser, as if typed after its flag.
fn check(arg: &Arg, values: &[String]) -> Result<(), String> {
    let long = arg.get_long().unwrap_or("value");
    let takes_values = arg.get_action().takes_values();
    if !takes_values {
        if !matches!(arg.get_action(), ArgAction::SetTrue) {
            return Err("cannot be set in a file".to_string());
        }
        return match values {
            [v] if v == "true" || v == "false" => Ok(()),
            _ => Err("expected true or false".to_string()),
        };
    }
    let many = arg.get_num_args().is_some_and(|n| n.max_values() > 1)
        || matches!(arg.get_action(), ArgAction::Append)
        || arg.get_value_delimiter().is_some();
    if values.len() > 1 && !many {
        return Err("takes one value, not a list".to_string());
    }
    let mut probe = Arg::new("probe").long(long.to_string()).value_parser(arg.get_value_parser().clone());
    probe = probe.action(ArgAction::Append).num_args(1);
    if let Some(delimiter) = arg.get_value_delimiter() {
        probe = probe.value_delimiter(delimiter);
    }
    if let Some(names) = arg.get_value_names() {
        probe = probe.value_names(names.to_vec());
    }
    let argv: Vec<String> = values.iter().map(|v| format!("--{long}={v}")).collect();
    let probe = ClapCommand::new("carrier").no_binary_name(true).color(ColorChoice::Never).arg(probe);
    match probe.try_get_matches_from(argv) {
        Ok(_) => Ok(()),
        Err(e) => Err(clap_reason(&e)),
    }
}

/// A clap error's reason without its `error:` prefix and usage lines.
fn clap_reason(error: &clap::Error) -> String {
    let text = error.render().to_string();
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .collect();
    lines.join(" ").trim_start_matches("error: ").to_string()
}

/// `carrier config`.
pub fn main(args: ConfigArgs) -> anyhow::Result<ExitCode> {
    let layered = LAYERED.get().ok_or_else(|| anyhow::anyhow!("the command line was not read through carrier_cli"))?;
    if args.reference {
        return emit(&reference(&layered.base));
    }
    let mut argv: Vec<OsString> = vec!["carrier".into()];
    if args.command_line.is_empty() {
        argv.push("run".into());
    } else {
        argv.extend(args.command_line);
    }
    let matches = match layered.command.clone().color(ColorChoice::Never).try_get_matches_from(&argv) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: that command line would fail: {}", clap_reason(&e));
            return Ok(ExitCode::from(2));
        }
    };
    let mut command = layered.command.clone();
    command.build();
    let (path, leaf, matches) = leaf(&command, &matches);
    let mut settings = settings(layered, &path, leaf, matches);
    // Laying a file value in moves its flag to the end; list them in the definition's order.
    let mut base = layered.base.clone();
    base.build();
    let mut at = &base;
    for name in path.split(' ').filter(|n| !n.is_empty()) {
        at = at.find_subcommand(name).unwrap_or(at);
    }
    let order: Vec<&str> = at.get_arguments().filter_map(|a| a.get_long()).collect();
    settings.sort_by_key(|s| order.iter().position(|l| *l == s.key).unwrap_or(usize::MAX));
    let file = layered.file.as_ref().map(|p| p.display().to_string());
    if args.json {
        let settings: Vec<_> = settings
            .iter()
            .map(|s| {
                serde_json::json!({"key": s.key, "value": s.value, "source": s.source, "detail": s.detail, "note": s.note})
            })
            .collect();
        let shown = serde_json::json!({"command": path, "file": file, "settings": settings});
        return emit(&format!("{}\n", serde_json::to_string_pretty(&shown)?));
    }
    use std::fmt::Write as _;
    let mut out = String::new();
    writeln!(out, "# the effective configuration of `{} {path}`", crate::binary_name())?;
    match &file {
        Some(file) => writeln!(out, "# configuration file: {file}")?,
        None => writeln!(
            out,
            "# configuration file: none (--config, CARRIER_CONFIG, ./{}.toml or {})",
            crate::binary_name(),
            default_paths().last().map(|p| p.display().to_string()).unwrap_or_default()
        )?,
    }
    writeln!(out, "# precedence: flag > environment > file > default\n")?;
    if !path.is_empty() {
        writeln!(out, "[{path}]")?;
    }
    let width = settings.iter().map(|s| s.toml_line().len()).max().unwrap_or(0);
    for setting in &settings {
        let line = setting.toml_line();
        let mut from = match &setting.detail {
            Some(detail) => format!("{}: {detail}", setting.source),
            None => setting.source.to_string(),
        };
        if let Some(note) = &setting.note {
            from = format!("{from} ({note})");
        }
        writeln!(out, "{line:width$}  # {from}")?;
    }
    emit(&out)
}

/// Writes to stdout; a reader that went away (`| head`) is not an error.
fn emit(text: &str) -> anyhow::Result<ExitCode> {
    use std::io::Write as _;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// The deepest subcommand the command line names, its path (`"dlq list"`) and its matches.
fn leaf<'a>(command: &'a ClapCommand, matches: &'a ArgMatches) -> (String, &'a ClapCommand, &'a ArgMatches) {
    let mut path = Vec::new();
    let (mut command, mut matches) = (command, matches);
    while let Some((name, sub_matches)) = matches.subcommand() {
        let Some(sub) = command.find_subcommand(name) else { break };
        path.push(name.to_string());
        command = sub;
        matches = sub_matches;
    }
    (path.join(" "), command, matches)
}

struct Setting {
    key: String,
    value: serde_json::Value,
    source: &'static str,
    detail: Option<String>,
    /// What was left out of the value (a URL's user information).
    note: Option<String>,
}

impl Setting {
    fn toml_line(&self) -> String {
        match &self.value {
            serde_json::Value::Null => format!("# {} =", self.key),
            serde_json::Value::Array(values) => {
                let values: Vec<String> = values.iter().map(|v| toml_text(&v.to_string())).collect();
                format!("{} = [{}]", self.key, values.join(", "))
            }
            serde_json::Value::Bool(b) => format!("{} = {b}", self.key),
            serde_json::Value::String(s) => format!("{} = {}", self.key, toml_text(s)),
            other => format!("{} = {other}", self.key),
        }
    }
}

/// A string as TOML: a plain integer stays one, anything else is quoted.
fn toml_text(text: &str) -> String {
    let text = text.trim_matches('"');
    if !text.is_empty() && text.len() < 19 && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.to_string();
    }
    // A JSON string's escapes are valid in a TOML basic string.
    serde_json::Value::from(text).to_string()
}

fn settings(layered: &Layered, path: &str, command: &ClapCommand, matches: &ArgMatches) -> Vec<Setting> {
    let mut settings = Vec::new();
    for arg in command.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if NOT_SETTINGS.contains(&long) || arg.is_hide_set() {
            continue;
        }
        let id = arg.get_id().as_str();
        let raw: Vec<String> = matches
            .get_raw(id)
            .map(|values| values.map(|v| v.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let source = matches.value_source(id);
        let (source, detail) = match source {
            Some(ValueSource::CommandLine) => ("flag", Some(format!("--{long}"))),
            Some(ValueSource::EnvVariable) => ("environment", arg.get_env().map(|e| e.to_string_lossy().into_owned())),
            Some(ValueSource::DefaultValue) => match file_origin(layered, path, id) {
                Some(origin) => {
                    ("file", layered.file.as_ref().map(|f| format!("{} line {}", f.display(), origin.line)))
                }
                None => ("default", None),
            },
            _ => ("not set", None),
        };
        let takes_values = arg.get_action().takes_values();
        let mut note = None;
        let value = if source == "not set" || raw.is_empty() {
            serde_json::Value::Null
        } else if !takes_values {
            serde_json::Value::Bool(raw.first().is_some_and(|v| v == "true"))
        } else {
            let raw: Vec<String> = raw
                .into_iter()
                .map(|v| {
                    let (shown, hidden) = shown_value(arg, v);
                    if hidden {
                        note = Some("user information hidden".to_string());
                    }
                    shown
                })
                .collect();
            let many = arg.get_num_args().is_some_and(|n| n.max_values() > 1)
                || matches!(arg.get_action(), ArgAction::Append)
                || arg.get_value_delimiter().is_some();
            if many {
                serde_json::Value::Array(raw.into_iter().map(serde_json::Value::String).collect())
            } else {
                serde_json::Value::String(raw.join(","))
            }
        };
        settings.push(Setting { key: long.to_string(), value, source, detail, note });
    }
    settings
}

/// A value as it may be printed (secrets masked, a URL without its user information) and
/// whether a URL's user information was left out.
fn shown_value(arg: &Arg, value: String) -> (String, bool) {
    if !arg.is_hide_env_values_set() {
        return (value, false);
    }
    if arg.get_long().is_some_and(|l| l.ends_with("url")) {
        let mut hidden = false;
        let shown = value
            .split(',')
            .map(|url| {
                let shown = carrier_actors::NatsOptions::new(url.trim()).display_url();
                hidden |= shown != url.trim();
                shown
            })
            .collect::<Vec<_>>()
            .join(",");
        return (shown, hidden);
    }
    (MASK.to_string(), false)
}

/// The file value nearest to `path` (the subcommand's own section, then its parents, the top).
fn file_origin<'a>(layered: &'a Layered, path: &str, id: &str) -> Option<&'a Origin> {
    let mut parts: Vec<&str> = if path.is_empty() { Vec::new() } else { path.split(' ').collect() };
    loop {
        let at = parts.join(" ");
        if let Some(origin) = layered.origins.get(&(at, id.to_string())) {
            return Some(origin);
        }
        if parts.pop().is_none() {
            return None;
        }
    }
}

/// Every setting of every subcommand, as a Markdown table.
pub(crate) fn reference(base: &ClapCommand) -> String {
    struct Row {
        env: String,
        default: String,
        help: String,
        commands: Vec<String>,
    }
    fn walk(command: &ClapCommand, path: &str, rows: &mut Vec<(String, Row)>, all: &mut Vec<String>) {
        if !path.is_empty() {
            all.push(path.to_string());
        }
        for arg in command.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            // The root's own (global) flags reach every subcommand and are listed there.
            if path.is_empty() || NOT_SETTINGS.contains(&long) || arg.is_hide_set() {
                continue;
            }
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            let help = help.split("\n\n").next().unwrap_or_default().replace('\n', " ").replace('|', "\\|");
            let help = help.trim().to_string();
            // One row per flag and meaning: `--json` of `status` is not `--json` of `config`.
            let at = match rows.iter().position(|(key, row)| key == long && row.help == help) {
                Some(at) => at,
                None => {
                    let default: Vec<String> =
                        arg.get_default_values().iter().map(|v| v.to_string_lossy().into_owned()).collect();
                    let default = if !arg.get_action().takes_values() {
                        "`false`".to_string()
                    } else if default.is_empty() {
                        String::new()
                    } else {
                        format!("`{}`", default.join(","))
                    };
                    let env = arg.get_env().map(|e| format!("`{}`", e.to_string_lossy())).unwrap_or_default();
                    rows.push((long.to_string(), Row { env, default, help, commands: Vec::new() }));
                    rows.len() - 1
                }
            };
            rows[at].1.commands.push(path.to_string());
        }
        for sub in command.get_subcommands().filter(|s| s.get_name() != "help") {
            let sub_path =
                if path.is_empty() { sub.get_name().to_string() } else { format!("{path} {}", sub.get_name()) };
            walk(sub, &sub_path, rows, all);
        }
    }
    let mut command = base.clone();
    command.build();
    let (mut rows, mut all) = (Vec::new(), Vec::new());
    walk(&command, "", &mut rows, &mut all);
    // Settings that reach the same subcommands are one table, under those subcommands' names.
    let mut groups: Vec<(Vec<String>, Vec<(String, Row)>)> = Vec::new();
    for (key, row) in rows {
        match groups.iter_mut().find(|(commands, _)| *commands == row.commands) {
            Some((_, members)) => members.push((key, row)),
            None => groups.push((row.commands.clone(), vec![(key, row)])),
        }
    }
    let quoted = |list: &[&String]| list.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", ");
    let mut out = String::new();
    for (commands, members) in groups {
        let missing: Vec<&String> = all.iter().filter(|c| !commands.contains(c)).collect();
        let heading = if missing.is_empty() {
            "every subcommand".to_string()
        } else if missing.len() * 2 < all.len() {
            format!("every subcommand but {}", quoted(&missing))
        } else {
            quoted(&commands.iter().collect::<Vec<_>>())
        };
        out.push_str(&format!("### {heading}\n\n| key | environment | default | what it is |\n|---|---|---|---|\n"));
        for (key, row) in members {
            out.push_str(&format!("| `{key}` | {} | {} | {} |\n", row.env, row.default, row.help));
        }
        out.push('\n');
    }
    out
}
