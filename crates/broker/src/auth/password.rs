//! Mosquitto-compatible password files: `user:hash` lines.
//!
//! Three hash forms are read, each as Mosquitto writes it:
//! - `$7$iterations$salt$hash`: PBKDF2-HMAC-SHA512, salt and 64-byte hash in standard base64
//!   (what `mosquitto_passwd` 2.0 writes by default);
//! - `$6$salt$hash`: one SHA-512 over password then salt, both in standard base64
//!   (`mosquitto_passwd -H sha512`, the 1.x default; not glibc's SHA-512 crypt);
//! - `$argon2id$v=19$m=..,t=..,p=..$salt$hash`: a PHC string (what `midge passwd` writes);
//! - `SCRAM-SHA-256$i:salt$StoredKey:ServerKey,SCRAM-SHA-512$i:salt$StoredKey:ServerKey`:
//!   SCRAM keys in RFC 5803's form, one or both hashes (what `midge passwd --scram` writes).
//!
//! SCRAM (see [`super::scram`]) is served by `$7$` lines for SCRAM-SHA-512 (their hash is
//! its SaltedPassword) and by SCRAM lines for the hashes they hold; `$6$` and argon2id
//! lines cannot serve it. Plain passwords are checked against every form.
//!
//! Digests are compared in constant time; argon2's own comparison is constant time too.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use base64ct::{Base64, Encoding};
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;

use super::AuthError;
use super::scram::{Decoys, Mechanism, StoredKeys};

/// Length of the SHA-512 digests in `$6$` and `$7$` lines.
const DIGEST_LEN: usize = 64;

/// One stored password hash.
#[derive(Clone)]
enum Hash {
    /// Mosquitto `$6$`: SHA-512(password || salt).
    Sha512 {
        salt: Vec<u8>,
        digest: [u8; DIGEST_LEN],
    },
    /// Mosquitto `$7$`: PBKDF2-HMAC-SHA512, with the SCRAM-SHA-512 keys derived from it.
    Pbkdf2 {
        iterations: u32,
        salt: Vec<u8>,
        digest: [u8; DIGEST_LEN],
        scram: Box<StoredKeys>,
    },
    /// A PHC `$argon2id$` string, validated at load.
    Argon2id(String),
    /// SCRAM keys, by [`Mechanism`] (`Sha256` first); at least one.
    Scram(Box<[Option<StoredKeys>; 2]>),
}

impl std::fmt::Debug for Hash {
    // Hashes stay out of logs and debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Sha512 { .. } => "$6$",
            Self::Pbkdf2 { .. } => "$7$",
            Self::Argon2id(_) => "$argon2id$",
            Self::Scram(_) => "SCRAM",
        })
    }
}

/// What verifying against a hash costs: the scheme and its work parameters. Two hashes of
/// one class take the same time to check, whatever the password.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Cost {
    Sha512,
    Pbkdf2 {
        iterations: u32,
    },
    Argon2id {
        m_cost: u32,
        t_cost: u32,
        p_cost: u32,
        output_len: usize,
    },
    Scram {
        mechanism: Mechanism,
        iterations: u32,
    },
}

#[cfg(test)]
thread_local! {
    /// The cost class of every verification done on this thread, for the tests.
    static WORK: std::cell::RefCell<Vec<Cost>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Hash {
    fn cost(&self) -> Cost {
        match self {
            Self::Scram(_) => {
                let (mechanism, keys) = self.plain_scram_keys();
                Cost::Scram {
                    mechanism,
                    iterations: keys.iterations,
                }
            }
            Self::Sha512 { .. } => Cost::Sha512,
            Self::Pbkdf2 { iterations, .. } => Cost::Pbkdf2 {
                iterations: *iterations,
            },
            Self::Argon2id(phc) => {
                // Validated at load, so this parses.
                let params = PasswordHash::new(phc)
                    .ok()
                    .and_then(|parsed| argon2::Params::try_from(&parsed).ok());
                let params = params.unwrap_or_default();
                Cost::Argon2id {
                    m_cost: params.m_cost(),
                    t_cost: params.t_cost(),
                    p_cost: params.p_cost(),
                    output_len: params.output_len().unwrap_or(0),
                }
            }
        }
    }

    /// The SCRAM keys a plain password is checked against: SHA-512's if there, else
    /// SHA-256's. Only for [`Hash::Scram`].
    fn plain_scram_keys(&self) -> (Mechanism, &StoredKeys) {
        let Self::Scram(keys) = self else {
            unreachable!("only called for SCRAM entries")
        };
        match &**keys {
            [_, Some(keys)] => (Mechanism::Sha512, keys),
            [Some(keys), None] => (Mechanism::Sha256, keys),
            [None, None] => unreachable!("a SCRAM entry has keys for one hash at least"),
        }
    }

    /// The keys this entry holds for `mechanism`, if it can serve it.
    fn scram_keys(&self, mechanism: Mechanism) -> Option<&StoredKeys> {
        match (self, mechanism) {
            (Self::Pbkdf2 { scram, .. }, Mechanism::Sha512) => Some(scram),
            (Self::Scram(keys), _) => keys[mechanism as usize].as_ref(),
            _ => None,
        }
    }

    fn parse(text: &str) -> Result<Self, String> {
        if text.starts_with("SCRAM-") {
            let mut keys: [Option<StoredKeys>; 2] = [None, None];
            for entry in text.split(',') {
                let (mechanism, parsed) = StoredKeys::parse_entry(entry)?;
                if keys[mechanism as usize].replace(parsed).is_some() {
                    return Err(format!("{} is given twice", mechanism.name()));
                }
            }
            Ok(Self::Scram(Box::new(keys)))
        } else if let Some(rest) = text.strip_prefix("$7$") {
            let mut parts = rest.split('$');
            let (Some(iterations), Some(salt), Some(digest), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err("a $7$ hash is $7$iterations$salt$hash".into());
            };
            let iterations: u32 = iterations
                .parse()
                .ok()
                .filter(|&n| n > 0)
                .ok_or("the $7$ iteration count is not a positive number")?;
            let (salt, digest) = (decode(salt, "salt")?, decode_digest(digest)?);
            let scram =
                StoredKeys::from_salted_password(Mechanism::Sha512, &salt, iterations, &digest);
            Ok(Self::Pbkdf2 {
                iterations,
                salt,
                digest,
                scram: Box::new(scram),
            })
        } else if let Some(rest) = text.strip_prefix("$6$") {
            // glibc's `$6$[rounds=N$]salt$hash` has an 86-character hash in crypt's own
            // base64; Mosquitto's has 88 characters of standard base64.
            if rest.starts_with("rounds=") || rest.rsplit('$').next().is_some_and(|h| h.len() == 86)
            {
                return Err(
                    "this is a glibc SHA-512 crypt hash, which Mosquitto does not read \
                            either; set the password again with `midge passwd`"
                        .into(),
                );
            }
            let mut parts = rest.split('$');
            let (Some(salt), Some(digest), None) = (parts.next(), parts.next(), parts.next())
            else {
                return Err("a $6$ hash is $6$salt$hash".into());
            };
            Ok(Self::Sha512 {
                salt: decode(salt, "salt")?,
                digest: decode_digest(digest)?,
            })
        } else if text.starts_with("$argon2id$") {
            let parsed = PasswordHash::new(text).map_err(|e| format!("bad argon2id hash: {e}"))?;
            if parsed.salt.is_none() || parsed.hash.is_none() {
                return Err("the argon2id hash has no salt or no output".into());
            }
            argon2::Params::try_from(&parsed)
                .map_err(|e| format!("bad argon2id parameters: {e}"))?;
            Ok(Self::Argon2id(text.to_owned()))
        } else if text.starts_with('$') {
            Err("unknown hash type (expected $6$, $7$, $argon2id$ or SCRAM-SHA-256/512)".into())
        } else {
            Err("not a hashed password (plain text passwords are not read; \
                 use `midge passwd` to hash it)"
                .into())
        }
    }

    /// Checks `password`; CPU-heavy for `$7$` with many iterations and for argon2id, so
    /// callers run it off the async workers.
    fn verify(&self, password: &[u8]) -> bool {
        #[cfg(test)]
        WORK.with(|work| work.borrow_mut().push(self.cost()));
        match self {
            Self::Sha512 { salt, digest } => {
                let mut hasher = Sha512::new();
                hasher.update(password);
                hasher.update(salt);
                let computed = hasher.finalize();
                bool::from(computed.as_slice().ct_eq(digest))
            }
            Self::Pbkdf2 {
                iterations,
                salt,
                digest,
                ..
            } => {
                let mut computed = [0u8; DIGEST_LEN];
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, *iterations, &mut computed);
                bool::from(computed.ct_eq(digest))
            }
            Self::Argon2id(phc) => argon2::Argon2::default()
                .verify_password(password, phc.as_str())
                .is_ok(),
            Self::Scram(_) => {
                let (mechanism, keys) = self.plain_scram_keys();
                keys.verify_password(mechanism, password)
            }
        }
    }
}

fn decode(text: &str, what: &str) -> Result<Vec<u8>, String> {
    Base64::decode_vec(text).map_err(|_| format!("the {what} is not valid base64"))
}

fn decode_digest(text: &str) -> Result<[u8; DIGEST_LEN], String> {
    decode(text, "hash")?
        .try_into()
        .map_err(|_| format!("the hash is not {DIGEST_LEN} bytes of SHA-512"))
}

/// Hashes a password as argon2id with a fresh random salt and the argon2 crate's default
/// parameters (m = 19 MiB, t = 2, p = 1), as a PHC string for a password file line.
pub fn hash_password(password: &[u8]) -> Result<String, String> {
    argon2::Argon2::default()
        .hash_password(password)
        .map(|hash| hash.to_string())
        .map_err(|e| format!("cannot hash the password: {e}"))
}

/// A loaded password file.
#[derive(Debug)]
pub struct PasswordFile {
    path: PathBuf,
    users: HashMap<String, Hash>,
    /// One hash of each cost class in the file (its first), with the class. Every check
    /// verifies exactly one hash of each class: the user's own for its class, these for
    /// the others (all of them for an unknown user). A file mixing schemes, as a migration
    /// from Mosquitto's `$7$` to argon2id does, thus costs the same for every name, known
    /// or not, and timing does not tell which names exist.
    decoys: Vec<(Cost, Hash)>,
    /// Per [`Mechanism`]: the salt length and iteration count SCRAM decoys get (the most
    /// common among the entries serving it), or `None` when no entry serves it.
    scram_shapes: [Option<(usize, u32)>; 2],
    /// Keyed by the file's contents, so a name's decoy salt is the same after a restart.
    scram_decoys: Decoys,
}

/// What [`PasswordFile::scram_keys`] found for a name.
#[derive(Debug)]
pub struct ScramLookup {
    /// The user's keys, or decoys.
    pub keys: StoredKeys,
    /// The keys are the user's: the exchange can succeed.
    pub genuine: bool,
    /// The user has a line (which may not serve this hash).
    pub listed: bool,
}

impl PasswordFile {
    /// Reads and parses `path`. Every bad line is an error naming the file and the line.
    pub fn load(path: &Path) -> Result<Self, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
            path: path.to_owned(),
            source,
        })?;
        let file = Self::parse(path, &text)?;
        if file.verifications_per_login() > 1 {
            tracing::info!(
                path = %path.display(),
                hash_kinds = file.verifications_per_login(),
                "the password file mixes hash schemes or parameters: every login verifies one \
                 hash of each kind, so that timing does not tell which user names exist; \
                 set old passwords again with `midge passwd` to make logins cheaper"
            );
        }
        Ok(file)
    }

    /// Parses password file text; `path` is for error messages.
    pub fn parse(path: &Path, text: &str) -> Result<Self, AuthError> {
        let mut users = HashMap::new();
        let mut first_line = HashMap::new();
        let mut decoys: Vec<(Cost, Hash)> = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line_no = index + 1;
            let bad = |reason: String| AuthError::Line {
                path: path.to_owned(),
                line: line_no,
                reason,
            };
            let line = raw.trim_end_matches(['\r', '\n']);
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((user, hash)) = line.split_once(':') else {
                return Err(bad("expected `user:hash`".into()));
            };
            if user.is_empty() {
                return Err(bad("empty user name".into()));
            }
            let hash =
                Hash::parse(hash.trim_end()).map_err(|r| bad(format!("user {user}: {r}")))?;
            if let Some(previous) = first_line.insert(user.to_owned(), line_no) {
                return Err(bad(format!(
                    "user {user} is already defined on line {previous}"
                )));
            }
            let cost = hash.cost();
            if !decoys.iter().any(|(c, _)| *c == cost) {
                decoys.push((cost, hash.clone()));
            }
            users.insert(user.to_owned(), hash);
        }
        let mut scram_shapes = [None, None];
        for mechanism in Mechanism::ALL {
            let mut shapes: HashMap<(usize, u32), usize> = HashMap::new();
            for keys in users.values().filter_map(|h| h.scram_keys(mechanism)) {
                *shapes
                    .entry((keys.salt.len(), keys.iterations))
                    .or_default() += 1;
            }
            scram_shapes[mechanism as usize] = shapes
                .into_iter()
                .max_by_key(|&((salt_len, iterations), count)| (count, iterations, salt_len))
                .map(|(shape, _)| shape);
        }
        Ok(Self {
            path: path.to_owned(),
            users,
            decoys,
            scram_shapes,
            scram_decoys: Decoys::new(text.as_bytes()),
        })
    }

    /// Whether any entry holds keys for `mechanism`.
    pub fn offers_scram(&self, mechanism: Mechanism) -> bool {
        self.scram_shapes[mechanism as usize].is_some()
    }

    /// The SCRAM keys of `user` for `mechanism`, or decoys when the user is not listed or
    /// the line cannot serve that hash. Decoys are derived for every call, so a known
    /// and an unknown name cost the same (a few HMACs; no PBKDF2 on the server).
    pub fn scram_keys(&self, mechanism: Mechanism, user: &str) -> ScramLookup {
        let (salt_len, iterations) = self.scram_shapes[mechanism as usize].unwrap_or((16, 4096));
        let decoy = self
            .scram_decoys
            .keys(mechanism, user, salt_len, iterations);
        let own = self.users.get(user);
        match own.and_then(|hash| hash.scram_keys(mechanism)) {
            Some(keys) => {
                std::hint::black_box(decoy);
                ScramLookup {
                    keys: keys.clone(),
                    genuine: true,
                    listed: true,
                }
            }
            None => ScramLookup {
                keys: decoy,
                genuine: false,
                listed: own.is_some(),
            },
        }
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// True when the file has no users.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether `user` has a line.
    pub fn contains(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks a user's password. Blocking and CPU-heavy: run it in `spawn_blocking`.
    /// Every call, for a known or an unknown user, verifies one hash of each cost class
    /// in the file (see `decoys`); an unknown user fails.
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        let own = self.users.get(user);
        let own_cost = own.map(Hash::cost);
        let verified = own.is_some_and(|hash| hash.verify(password));
        for (cost, decoy) in &self.decoys {
            if Some(*cost) != own_cost {
                // black_box: the result is unused, and the work must not be optimized out.
                std::hint::black_box(decoy.verify(std::hint::black_box(password)));
            }
        }
        verified
    }

    /// Hashes verified per login: the cost classes (scheme and parameters) in the file.
    pub fn verifications_per_login(&self) -> usize {
        self.decoys.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines made by mosquitto_passwd 2.0.11: alice/secret1 ($7$), carol/hunter2 (-H sha512).
    const MOSQUITTO: &str = "\
alice:$7$101$7uMu3Vpxl+R6GBp2$AlLlV6aP5pffa77x98O7CGwmHfHP9cVTSHduCITeKqeO0D+U5glkNOjHGI1cRWxTf+kUgbqCBUdehHipxFREVw==
carol:$6$/gLxeBsT5Y7K/1z7$ODQfQYx1PvVTVm9apNA4E8NjmvmTKvKfdmxWk1w5S4vG0sojq8C+50CoEPtC/uVvSBgu4A5IBXtVOvb1y7Le+g==
";

    fn parse(text: &str) -> Result<PasswordFile, AuthError> {
        PasswordFile::parse(Path::new("pw"), text)
    }

    #[test]
    fn mosquitto_pbkdf2_and_sha512_lines_verify() {
        let file = parse(MOSQUITTO).unwrap();
        assert!(file.verify("alice", b"secret1"));
        assert!(!file.verify("alice", b"secret2"));
        assert!(file.verify("carol", b"hunter2"));
        assert!(!file.verify("carol", b"hunter3"));
        assert!(!file.verify("nobody", b"secret1"));
    }

    #[test]
    fn argon2id_lines_written_by_hash_password_verify() {
        let line = format!("dave:{}\n", hash_password(b"pw").unwrap());
        assert!(
            line.starts_with("dave:$argon2id$v=19$m=19456,t=2,p=1$"),
            "{line}"
        );
        let file = parse(&line).unwrap();
        assert!(file.verify("dave", b"pw"));
        assert!(!file.verify("dave", b"pW"));
    }

    #[test]
    fn comments_blank_lines_and_crlf_are_accepted() {
        let text = format!("# users\r\n\r\n{}", MOSQUITTO.replace('\n', "\r\n"));
        let file = parse(&text).unwrap();
        assert_eq!(file.len(), 2);
        assert!(file.verify("alice", b"secret1"));
    }

    #[test]
    fn bad_lines_name_the_file_and_line() {
        for (text, expect) in [
            ("a:$7$101$AAAA$AAAA\n", "64 bytes"),
            ("\nplain:secret\n", "not a hashed password"),
            ("x\n", "user:hash"),
            ("b:$5$abc$def\n", "unknown hash type"),
            ("c:$argon2id$v=19$nonsense\n", "argon2id"),
            (
                "d:$6$rounds=5000$salt$1234567890123456789012345678901234567890123456789012345678901234567890123456789012345\n",
                "glibc",
            ),
        ] {
            let message = parse(text).unwrap_err().to_string();
            assert!(message.starts_with("pw:"), "{message}");
            assert!(message.contains(expect), "{text}: {message}");
        }
        let message = parse("\n\nplain:secret\n").unwrap_err().to_string();
        assert!(message.contains("line 3"), "{message}");
    }

    #[test]
    fn a_user_defined_twice_is_refused() {
        let text = format!("{MOSQUITTO}{}", MOSQUITTO.lines().next().unwrap());
        let message = parse(&text).unwrap_err().to_string();
        assert!(message.contains("already defined on line 1"), "{message}");
    }

    /// The cost classes of the verifications `check` does, sorted.
    fn work_of(check: impl FnOnce()) -> Vec<Cost> {
        WORK.with(|work| work.borrow_mut().clear());
        check();
        let mut done = WORK.with(|work| std::mem::take(&mut *work.borrow_mut()));
        done.sort();
        done
    }

    /// An argon2id line with cheaper parameters than `hash_password`'s.
    fn cheap_argon2id(password: &[u8]) -> String {
        let params = argon2::Params::new(8192, 1, 1, None).unwrap();
        argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
            .hash_password(password)
            .unwrap()
            .to_string()
    }

    #[test]
    fn an_unknown_user_costs_the_same_verifications_as_every_known_user() {
        // The documented migration: Mosquitto's $7$ and $6$ lines next to argon2id ones,
        // with two argon2id parameter sets. Whoever is asked about, the same hashing is
        // done, so the time taken says nothing about whether the name exists.
        let text = format!(
            "{MOSQUITTO}dave:{}\nerin:{}\nfrank:{}\n",
            hash_password(b"pw").unwrap(),
            cheap_argon2id(b"pw2"),
            cheap_argon2id(b"pw3"),
        );
        let file = parse(&text).unwrap();
        let unknown = work_of(|| assert!(!file.verify("nobody", b"pw")));
        assert_eq!(unknown.len(), 4, "one per cost class: {unknown:?}");
        for (user, right) in [
            ("alice", &b"secret1"[..]),
            ("carol", b"hunter2"),
            ("dave", b"pw"),
            ("erin", b"pw2"),
            ("frank", b"pw3"),
        ] {
            assert_eq!(
                work_of(|| assert!(file.verify(user, right))),
                unknown,
                "{user}"
            );
            assert_eq!(
                work_of(|| assert!(!file.verify(user, b"wrong"))),
                unknown,
                "{user}"
            );
        }
    }

    #[test]
    fn a_single_scheme_file_costs_one_verification_per_login() {
        let file = parse(MOSQUITTO.lines().next().unwrap()).unwrap();
        let unknown = work_of(|| assert!(!file.verify("nobody", b"secret1")));
        assert_eq!(unknown, [Cost::Pbkdf2 { iterations: 101 }]);
        assert_eq!(
            work_of(|| assert!(file.verify("alice", b"secret1"))),
            unknown
        );
    }

    #[test]
    fn mosquitto_pbkdf2_lines_are_scram_sha_512_keys() {
        let file = parse(MOSQUITTO).unwrap();
        let alice = file.scram_keys(Mechanism::Sha512, "alice");
        assert!(alice.genuine && alice.listed);
        let salt = Base64::decode_vec("7uMu3Vpxl+R6GBp2").unwrap();
        let expected = StoredKeys::from_password(Mechanism::Sha512, b"secret1", &salt, 101);
        assert_eq!(alice.keys, expected);
        // $7$ holds nothing for SHA-256, and $6$ nothing for either.
        assert!(!file.offers_scram(Mechanism::Sha256));
        assert!(file.offers_scram(Mechanism::Sha512));
        let carol = file.scram_keys(Mechanism::Sha512, "carol");
        assert!(!carol.genuine && carol.listed);
    }

    #[test]
    fn scram_lines_check_plain_passwords_and_unknown_names_get_decoys_alike() {
        let entry = super::super::scram::scram_entry(b"pw", Some(4096)).unwrap();
        let text = format!("{MOSQUITTO}erin:{entry}\n");
        let file = parse(&text).unwrap();
        assert!(file.verify("erin", b"pw"));
        assert!(!file.verify("erin", b"pW"));
        for mechanism in Mechanism::ALL {
            let erin = file.scram_keys(mechanism, "erin");
            assert!(erin.genuine, "{mechanism:?}");
            let nobody = file.scram_keys(mechanism, "nobody");
            assert!(!nobody.genuine && !nobody.listed);
            assert_eq!(
                nobody.keys,
                file.scram_keys(mechanism, "nobody").keys,
                "the same decoy each time"
            );
            assert_eq!(
                nobody.keys.salt.len(),
                erin.keys.salt.len(),
                "{mechanism:?}"
            );
        }
        // SHA-512 decoys take the most common shape: two lines of 4096, one of 101.
        let more = format!(
            "{text}frank:{}\n",
            super::super::scram::scram_entry(b"pw2", Some(4096)).unwrap()
        );
        let file = parse(&more).unwrap();
        assert_eq!(
            file.scram_keys(Mechanism::Sha512, "nobody").keys.iterations,
            4096
        );
        // A SCRAM line costs a verification class of its own, for every name.
        let unknown = work_of(|| assert!(!file.verify("nobody", b"pw")));
        assert_eq!(work_of(|| assert!(file.verify("erin", b"pw"))), unknown);
        assert_eq!(unknown.len(), 3, "{unknown:?}");
        for bad in [
            "e:SCRAM-SHA-256$4096:c2FsdA==$AAAA:AAAA\n",
            "e:SCRAM-SHA-999$4096:c2FsdA==$AAAA:AAAA\n",
            &format!("e:{entry},{entry}\n"),
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hashes_stay_out_of_debug_output() {
        let file = parse(MOSQUITTO).unwrap();
        let debug = format!("{file:?}");
        assert!(!debug.contains("AlLlV6aP5"), "{debug}");
    }
}
