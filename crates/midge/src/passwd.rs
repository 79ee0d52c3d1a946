//! `midge passwd`: add, update or delete a user in a Mosquitto-format password file.
//! New passwords are written as argon2id, or with `--scram` as SCRAM keys for SCRAM-SHA-256
//! and SCRAM-SHA-512 (RFC 5803's form; plain passwords are checked against them too);
//! every other line is kept as it was.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  midge passwd -c passwords alice        create the file, prompt for alice's password\n  midge passwd -b passwords bob s3cret    set bob's password without prompting\n  midge passwd --scram passwords carol    carol may log in with SCRAM-SHA-256/512 too\n  midge passwd -D passwords bob           delete bob"
)]
pub struct PasswdArgs {
    /// Create the file, replacing any existing one.
    #[arg(short = 'c', long = "create", conflicts_with = "delete")]
    create: bool,
    /// Delete USER instead of setting a password.
    #[arg(short = 'D', long = "delete")]
    delete: bool,
    /// Batch mode, as mosquitto_passwd: the password is the third argument, not prompted.
    #[arg(
        short = 'b',
        long = "batch",
        conflicts_with = "delete",
        requires = "password"
    )]
    batch: bool,
    /// Write SCRAM-SHA-256 and SCRAM-SHA-512 keys (PBKDF2, for MQTT 5 enhanced
    /// authentication; plain-password logins work too) instead of argon2id.
    #[arg(long = "scram", conflicts_with = "delete")]
    scram: bool,
    /// With --scram: PBKDF2 iterations for both hashes (at least 4096). Default: 600000
    /// for SHA-256 and 210000 for SHA-512. The client computes them at every login.
    #[arg(long = "iterations", requires = "scram", value_name = "N")]
    iterations: Option<u32>,
    /// The password file.
    file: PathBuf,
    /// The user name.
    user: String,
    /// The password (with -b only).
    password: Option<String>,
}

pub fn run(args: PasswdArgs) -> anyhow::Result<()> {
    if args.password.is_some() && !args.batch {
        bail!("a password on the command line needs -b");
    }
    if args.user.is_empty() || args.user.contains([':', '\n', '\r']) {
        bail!("a user name must not be empty or contain ':' or a line break");
    }
    let existing = if args.create {
        String::new()
    } else {
        std::fs::read_to_string(&args.file)
            .with_context(|| format!("cannot read {} (use -c to create it)", args.file.display()))?
    };
    let updated = if args.delete {
        let (text, found) = without_user(&existing, &args.user);
        if !found {
            bail!("user {} is not in {}", args.user, args.file.display());
        }
        text
    } else {
        let password = match args.password {
            Some(password) => password,
            None => prompt()?,
        };
        if password.is_empty() {
            bail!("the password is empty");
        }
        let hash = if args.scram {
            midge_broker::auth::scram::scram_entry(password.as_bytes(), args.iterations)
        } else {
            midge_broker::auth::hash_password(password.as_bytes())
        };
        let hash = hash.map_err(anyhow::Error::msg)?;
        with_user(&existing, &args.user, &hash)
    };
    write_atomically(&args.file, &updated)
}

fn prompt() -> anyhow::Result<String> {
    let first = rpassword::prompt_password("Password: ").context("reading the password")?;
    let second =
        rpassword::prompt_password("Reenter password: ").context("reading the password")?;
    if first != second {
        bail!("the passwords do not match");
    }
    Ok(first)
}

/// The user of a `user:hash` line, if it is one.
fn line_user(line: &str) -> Option<&str> {
    if line.starts_with('#') {
        return None;
    }
    line.split_once(':').map(|(user, _)| user)
}

/// `text` with `user`'s line replaced by (or, if absent, followed by) `user:hash`.
fn with_user(text: &str, user: &str, hash: &str) -> String {
    let mut out = String::with_capacity(text.len() + hash.len() + user.len() + 2);
    let mut replaced = false;
    for line in text.split_inclusive('\n') {
        let content = line.trim_end_matches(['\r', '\n']);
        if !replaced && line_user(content) == Some(user) {
            out.push_str(user);
            out.push(':');
            out.push_str(hash);
            out.push_str(&line[content.len()..]);
            replaced = true;
        } else if line_user(content) != Some(user) {
            out.push_str(line);
        }
    }
    if !replaced {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(user);
        out.push(':');
        out.push_str(hash);
        out.push('\n');
    }
    out
}

/// `text` without `user`'s lines, and whether there was one.
fn without_user(text: &str, user: &str) -> (String, bool) {
    let mut found = false;
    let kept = text
        .split_inclusive('\n')
        .filter(|line| {
            let mine = line_user(line.trim_end_matches(['\r', '\n'])) == Some(user);
            found |= mine;
            !mine
        })
        .collect();
    (kept, found)
}

/// Writes through a temporary file and a rename, so the broker (or a reload) never reads
/// half a file. A new file is readable by its owner only; an existing one keeps its mode.
fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file_name = path
        .file_name()
        .with_context(|| format!("{} is not a file name", path.display()))?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(file_name);
    temp_name.push(".tmp");
    let temp = path.with_file_name(temp_name);
    let mode = std::fs::metadata(path).map_or(0o600, |m| m.permissions().mode() & 0o7777);
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&temp)?;
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result.with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updating_replaces_only_that_users_line() {
        let text = "# team\nalice:$7$old\r\nbob:$6$x$y\n";
        let out = with_user(text, "alice", "$argon2id$new");
        assert_eq!(out, "# team\nalice:$argon2id$new\r\nbob:$6$x$y\n");
    }

    #[test]
    fn adding_appends_a_line() {
        assert_eq!(with_user("a:h", "b", "H"), "a:h\nb:H\n");
        assert_eq!(with_user("", "b", "H"), "b:H\n");
    }

    #[test]
    fn deleting_keeps_other_lines() {
        let (out, found) = without_user("a:1\nb:2\n#b:3\n", "b");
        assert!(found);
        assert_eq!(out, "a:1\n#b:3\n");
        assert!(!without_user("a:1\n", "b").1);
    }
}
