//! Reading deployment files: raw JSON with positions, then validation into `model`.
//!
//! Three steps, each in its own module: `json` reads the text into a tree that knows the line
//! and column of every key and value; [`raw`] turns the tree into the file's own types, exactly as
//! written (keys matched case-insensitively as geard's Go decoder did, unknown keys and wrong
//! types refused); `validate` checks meaning and builds [`model::Deployment`], the only form
//! the rest of gearnat sees. Every problem found is reported, each with its position and a fix.
//!
//! Messages read `FILE:LINE:COLUMN: what is wrong; how to fix it`, one line per problem, lines
//! and columns 1-based, columns counted in characters, sorted by position; past
//! [`MAX_PROBLEMS_SHOWN`] a last line `FILE: N more problems not shown; ...` counts the rest.
//! A syntax error ends reading, so it comes alone (with any duplicate keys before it).

mod json;
pub mod raw;
mod validate;

use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::path::Path;

pub use json::{Pos, MAX_DEPTH, MAX_STRING_BYTES};

use crate::model;

/// Largest deployment file read, checked before reading it. geard's own examples are under
/// 2 KiB; a file at the other limits below stays well under this.
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// Most containers in one deployment.
pub const MAX_CONTAINERS: usize = 1_000;

/// Largest `Count` of one container.
pub const MAX_COUNT: u32 = 10_000;

/// Most public ports of one container.
pub const MAX_PUBLIC_PORTS: usize = 10_000;

/// Most mappings (instances x their public ports) in one deployment: each is a host map element
/// and, when the host picks it, a host port out of the 56,000 in 4000..59999.
pub const MAX_MAPPINGS: u64 = 50_000;

/// Most link entries (source instances x target instances x linked ports) in one deployment;
/// each is a map element in a source instance's network namespace.
pub const MAX_LINK_ENTRIES: u64 = 100_000;

/// Most problems shown; the rest are counted.
pub const MAX_PROBLEMS_SHOWN: usize = 20;

/// Most characters of a value from the file that a message repeats; a longer value (a key,
/// name or number of a hostile file can be 64 KiB) is cut, with its length said.
pub const MAX_SHOWN_CHARS: usize = 40;

/// A string from the file as messages show it: in double quotes with Rust's escapes, cut after
/// [`MAX_SHOWN_CHARS`] characters (`"kkkk..." (60000 characters)`).
pub(crate) struct Shown<'a>(pub &'a str);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let len = self.0.chars().count();
        if len <= MAX_SHOWN_CHARS {
            return write!(f, "{:?}", self.0);
        }
        let head: String = self.0.chars().take(MAX_SHOWN_CHARS).collect();
        write!(f, "{:?} ({len} characters)", format!("{head}..."))
    }
}

/// Like [`Shown`], without the quotes: for numbers and words, shown as written.
pub(crate) struct ShownBare<'a>(pub &'a str);

impl fmt::Display for ShownBare<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let len = self.0.chars().count();
        if len <= MAX_SHOWN_CHARS {
            return f.write_str(self.0);
        }
        let head: String = self.0.chars().take(MAX_SHOWN_CHARS).collect();
        write!(f, "{head}... ({len} characters)")
    }
}

/// One problem in a deployment file: where, and a message saying what is wrong and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    pub pos: Pos,
    pub message: String,
}

/// Why a deployment file could not be used. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum DeploymentError {
    /// The file could not be opened or read.
    #[error("{file}: {}", io_message(.error))]
    Read { file: String, error: io::Error },
    /// The path is a symbolic link to nothing.
    #[error(
        "{file}: a symbolic link to {target}, which does not exist; check the link or the path"
    )]
    DanglingLink { file: String, target: String },
    /// The path is a directory.
    #[error("{file}: this is a directory, not a deployment file; give the path of a JSON file")]
    Directory { file: String },
    /// The file is larger than [`MAX_FILE_BYTES`].
    #[error(
        "{file}: the file has {size} bytes, more than the {MAX_FILE_BYTES} a deployment file may \
         have; is this the right file?"
    )]
    TooLarge { file: String, size: u64 },
    /// The file is not UTF-8; `pos` is where the first invalid byte is.
    #[error("{file}:{pos}: the file is not valid UTF-8 (byte 0x{byte:02x}); save it as UTF-8")]
    NotUtf8 { file: String, pos: Pos, byte: u8 },
    /// The deployment name (from the file name or `--name`) is not usable.
    #[error("{file}: {reason}; {}", if *.from_flag { "give another --name" } else { "rename the file or give --name" })]
    Name {
        file: String,
        reason: String,
        from_flag: bool,
    },
    /// The file's content is wrong: syntax, keys, types or meaning.
    #[error("{}", render_problems(.file, .problems, *.hidden))]
    Invalid {
        file: String,
        problems: Vec<Problem>,
        hidden: usize,
    },
}

impl DeploymentError {
    /// The problems shown, for `Invalid`; empty otherwise.
    pub fn problems(&self) -> &[Problem] {
        match self {
            DeploymentError::Invalid { problems, .. } => problems,
            _ => &[],
        }
    }

    fn invalid(file: &str, mut problems: Vec<Problem>) -> Self {
        problems.sort();
        problems.dedup();
        let hidden = problems.len().saturating_sub(MAX_PROBLEMS_SHOWN);
        problems.truncate(MAX_PROBLEMS_SHOWN);
        DeploymentError::Invalid {
            file: file.to_string(),
            problems,
            hidden,
        }
    }
}

fn io_message(error: &io::Error) -> String {
    if error.raw_os_error() == Some(libc::ELOOP) {
        return "the path is a loop of symbolic links; give the path of a JSON file".to_string();
    }
    match error.kind() {
        io::ErrorKind::NotFound => "no such file; check the path".to_string(),
        io::ErrorKind::PermissionDenied => {
            "permission denied reading the file; check its permissions".to_string()
        }
        _ => format!("cannot read the file: {error}"),
    }
}

fn render_problems(file: &str, problems: &[Problem], hidden: usize) -> String {
    let mut out = String::new();
    for (i, p) in problems.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&format!("{file}:{}: {}", p.pos, p.message));
    }
    if hidden > 0 {
        out.push_str(&format!(
            "\n{file}: {hidden} more problem{} not shown; fix the ones above first",
            if hidden == 1 { "" } else { "s" }
        ));
    }
    out
}

/// Reads and validates a deployment file. `name`: the deployment name override (`--name`),
/// else derived from the file name by [`name_from_path`].
pub fn load(path: &Path, name: Option<&str>) -> Result<Deployment, DeploymentError> {
    let file = path.display().to_string();
    let from_flag = name.is_some();
    let name = name.map_or_else(|| name_from_path(path), str::to_string);
    // A missing file is the first thing to say, before anything about its name.
    let source = read_file(path, &file)?;
    check_name(&file, &name, from_flag)?;
    parse_checked(&source, &file, name)
}

/// Reads and validates a deployment from text; `file` is the name shown in messages and `name`
/// the deployment name.
pub fn parse(source: &str, file: &str, name: &str) -> Result<Deployment, DeploymentError> {
    check_name(file, name, true)?;
    if source.len() as u64 > MAX_FILE_BYTES {
        return Err(DeploymentError::TooLarge {
            file: file.to_string(),
            size: source.len() as u64,
        });
    }
    parse_checked(source, file, name.to_string())
}

pub use model::Deployment;

/// Reads a deployment file's text into its raw form, checking syntax, keys and types but not
/// meaning: for writing the file back (geard's output form), never for deploying.
pub fn parse_raw(source: &str, file: &str) -> Result<raw::RawDeployment, DeploymentError> {
    let (tree, mut problems) = json::read(source);
    let Some(tree) = tree else {
        return Err(DeploymentError::invalid(file, problems));
    };
    let (raw, raw_problems, _) = raw::build(&tree);
    problems.extend(raw_problems);
    if problems.is_empty() {
        Ok(raw)
    } else {
        Err(DeploymentError::invalid(file, problems))
    }
}

fn parse_checked(source: &str, file: &str, name: String) -> Result<Deployment, DeploymentError> {
    let (tree, mut problems) = crate::timing::timed("read json", || json::read(source));
    let Some(tree) = tree else {
        return Err(DeploymentError::invalid(file, problems));
    };
    let (raw, raw_problems, limit_hit) = crate::timing::timed("match keys", || raw::build(&tree));
    problems.extend(raw_problems);
    // Past a size limit nothing more is checked: the file is refused whatever else is in it.
    if limit_hit {
        return Err(DeploymentError::invalid(file, problems));
    }
    match crate::timing::timed("validate", || validate::validate(&raw, name)) {
        Ok(deployment) if problems.is_empty() => Ok(deployment),
        Ok(_) => Err(DeploymentError::invalid(file, problems)),
        Err(more) => {
            problems.extend(more);
            Err(DeploymentError::invalid(file, problems))
        }
    }
}

fn check_name(file: &str, name: &str, from_flag: bool) -> Result<(), DeploymentError> {
    check_deployment_name(name).map_err(|reason| DeploymentError::Name {
        file: file.to_string(),
        reason,
        from_flag,
    })
}

/// Reads the whole file as UTF-8, refusing directories and files over [`MAX_FILE_BYTES`]
/// before reading them.
fn read_file(path: &Path, file: &str) -> Result<String, DeploymentError> {
    let read_error = |error| DeploymentError::Read {
        file: file.to_string(),
        error,
    };
    let meta = fs::metadata(path).map_err(|error| match fs::read_link(path) {
        Ok(target) if error.kind() == io::ErrorKind::NotFound => DeploymentError::DanglingLink {
            file: file.to_string(),
            target: target.display().to_string(),
        },
        _ => read_error(error),
    })?;
    if meta.is_dir() {
        return Err(DeploymentError::Directory {
            file: file.to_string(),
        });
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(DeploymentError::TooLarge {
            file: file.to_string(),
            size: meta.len(),
        });
    }
    // The limit is enforced again while reading: a pipe or a growing file has no honest length.
    let mut bytes = Vec::new();
    fs::File::open(path)
        .and_then(|f| f.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes))
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(DeploymentError::TooLarge {
            file: file.to_string(),
            size: bytes.len() as u64,
        });
    }
    String::from_utf8(bytes).map_err(|e| {
        let valid = e.utf8_error().valid_up_to();
        let bytes = e.as_bytes();
        let text = std::str::from_utf8(&bytes[..valid]).unwrap_or_default();
        let line = text.matches('\n').count() as u32 + 1;
        let col = text.rsplit('\n').next().unwrap_or_default().chars().count() as u32 + 1;
        DeploymentError::NotUtf8 {
            file: file.to_string(),
            pos: Pos { line, col },
            byte: bytes[valid],
        }
    })
}

/// The deployment name of a file: its name without the extension, with geard's
/// `.YYYYMMDD-HHMMSS` output suffix dropped first (`rockmongo_mongodb.json.20140422-072112` ->
/// `rockmongo_mongodb`; `seed.json` -> `seed`).
pub fn name_from_path(path: &Path) -> String {
    let full = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut name = full.as_str();
    if let Some((stem, suffix)) = name.rsplit_once('.') {
        if is_geard_timestamp(suffix) && !stem.is_empty() {
            name = stem;
        }
    }
    match name.rsplit_once('.') {
        Some((stem, _)) if !stem.is_empty() => stem.to_string(),
        _ => name.to_string(),
    }
}

/// `YYYYMMDD-HHMMSS`, the suffix geard put on the output file it wrote (Go layout
/// `20060102-150405`).
fn is_geard_timestamp(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 15
        && b[8] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 8 || c.is_ascii_digit())
}

/// Longest deployment name.
pub const MAX_DEPLOYMENT_NAME: usize = 64;

/// Checks a deployment name: `[A-Za-z0-9_.-]{1,64}`, and not `.` or `..`. Names end up in
/// kernel comments (`gearnat:<deployment>/<instance>`) and in file names.
pub fn check_deployment_name(name: &str) -> Result<(), String> {
    const RULE: &str = "use letters, digits, \"_\", \".\" and \"-\", 1 to 64 of them";
    if name.is_empty() {
        return Err(format!("the deployment name is empty; {RULE}"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "_.-".contains(*c)))
    {
        return Err(format!(
            "the deployment name {} contains {}; {RULE}",
            Shown(name),
            validate::quote_char(c)
        ));
    }
    if name.len() > MAX_DEPLOYMENT_NAME {
        return Err(format!(
            "the deployment name {} has {} characters; {RULE}",
            Shown(name),
            name.len()
        ));
    }
    // deployments/<name>.json would be the record (<name>.state.json) of the deployment
    // named without the suffix, and overwrite it.
    if name.ends_with(".state") {
        return Err(format!(
            "the deployment name {} ends in \".state\", which would clash with the state file \
             of the deployment {}",
            Shown(name),
            Shown(name.strip_suffix(".state").unwrap_or(name))
        ));
    }
    if name == "." || name == ".." {
        return Err(format!(
            "the deployment name {name:?} names a directory; {RULE}"
        ));
    }
    Ok(())
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.pos, self.message)
    }
}

#[cfg(test)]
mod tests;
