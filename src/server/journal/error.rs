//! Why the journal could not be opened: one typed error for the journal layer.
//!
//! Each variant prints the one line the server always printed for it (a corrupt middle names its file
//! and byte offset, and the flag that gets past it), so scripts that read the text keep working, while
//! the server maps the variant and tests match it. A leaf: it imports nothing of the server.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// A journal that cannot be opened or replayed.
#[derive(Debug)]
pub enum JournalError {
    /// A file system call on the journal's directory or one of its files failed.
    Io { op: IoOp, path: PathBuf, source: io::Error },
    /// The meta file cannot be read as one.
    BadMeta { file: PathBuf, problem: MetaProblem },
    /// A data file holds entries but the meta file, which lists the journal, is gone: guessing the
    /// order would be worse than stopping.
    NoMeta { dir: PathBuf, file: String },
    /// An entry in the middle of the journal is corrupt and valid entries follow it: cutting there would
    /// lose records that were acknowledged, so the start stops unless told to truncate.
    Corrupt { file: PathBuf, offset: u64 },
    /// The writer thread cannot be started.
    Thread(io::Error),
    /// `journal.fsync` is not one of `always`, `everysec`, `no`.
    UnknownFsync(String),
}

/// The file system step that failed, named in the message as it always was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoOp {
    /// Creating the journal's directory.
    CreateDir,
    /// Reading the meta file or replaying a data file.
    Read,
    /// Listing the directory (to find debris of an interrupted rewrite).
    List,
    /// Removing debris.
    Remove,
    /// Cutting a torn or corrupt tail.
    Truncate,
    /// Opening the tail segment or writing the meta file.
    Open,
}

/// What is wrong with a meta file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaProblem {
    /// The first line is not `herd-journal 1`.
    NotMeta,
    /// A line (numbered from 1) that cannot be read.
    BadLine { line: usize, text: String },
    /// No `rid` line.
    NoRid,
}

impl IoOp {
    fn words(self) -> &'static str {
        match self {
            IoOp::CreateDir => "create journal directory",
            IoOp::Read => "read",
            IoOp::List => "list",
            IoOp::Remove => "remove",
            IoOp::Truncate => "truncate",
            IoOp::Open => "open the journal in",
        }
    }
}

impl JournalError {
    /// The `map_err` of a failed step on `path`.
    pub(crate) fn io(op: IoOp, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> JournalError {
        let path = path.into();
        move |source| JournalError::Io { op, path, source }
    }
}

impl fmt::Display for JournalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JournalError::Io { op, path, source } => write!(f, "cannot {} {}: {source}", op.words(), path.display()),
            JournalError::BadMeta { file, problem } => {
                let file = file.display();
                match problem {
                    MetaProblem::NotMeta => write!(f, "{file}: not a herd journal meta file (version 1)"),
                    MetaProblem::BadLine { line, text } => write!(f, "{file}: line {line}: cannot read {text:?}"),
                    MetaProblem::NoRid => write!(f, "{file}: no replication id"),
                }
            }
            JournalError::NoMeta { dir, file } => {
                write!(f, "journal {}: {file} holds entries but there is no meta file", dir.display())
            }
            JournalError::Corrupt { file, offset } => write!(
                f,
                "journal {}: corrupt entry at byte {offset}, with valid entries after it; \
                 `herd serve --journal-truncate-corrupt` keeps only what precedes it",
                file.display()
            ),
            JournalError::Thread(e) => write!(f, "cannot start the journal writer thread: {e}"),
            JournalError::UnknownFsync(value) => write!(f, "journal.fsync: {value:?}"),
        }
    }
}

impl std::error::Error for JournalError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            JournalError::Io { source, .. } | JournalError::Thread(source) => Some(source),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_read_as_they_always_did() {
        let e = JournalError::Corrupt { file: "/j/seg-1.log".into(), offset: 42 };
        assert_eq!(
            e.to_string(),
            "journal /j/seg-1.log: corrupt entry at byte 42, with valid entries after it; \
             `herd serve --journal-truncate-corrupt` keeps only what precedes it"
        );
        let e = JournalError::Io { op: IoOp::CreateDir, path: "/j".into(), source: io::ErrorKind::NotFound.into() };
        assert!(e.to_string().starts_with("cannot create journal directory /j: "), "{e}");
        assert!(std::error::Error::source(&e).is_some());
        let e = JournalError::BadMeta {
            file: "/j/meta".into(),
            problem: MetaProblem::BadLine { line: 3, text: "mode sometimes".into() },
        };
        assert_eq!(e.to_string(), "/j/meta: line 3: cannot read \"mode sometimes\"");
        let e = JournalError::NoMeta { dir: "/j".into(), file: "seg-1.log".into() };
        assert_eq!(e.to_string(), "journal /j: seg-1.log holds entries but there is no meta file");
        assert_eq!(JournalError::UnknownFsync("often".into()).to_string(), "journal.fsync: \"often\"");
    }
}
