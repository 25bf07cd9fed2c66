//! The `[exec]` table and its rules: which program, with which argument vectors, may set which
//! environment names. Checked at policy parse time, compiled once per call, matched per request.

use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeSet;

/// The `[exec]` table of a policy.
#[derive(Deserialize, Serialize, Debug)]
#[serde(deny_unknown_fields, default)]
pub struct ExecGrant {
    /// `[[exec.programs]]`: one table per program.
    #[serde(deserialize_with = "programs")]
    pub programs: Vec<ProgramGrant>,
    pub timeout_seconds: u64,
}

impl Default for ExecGrant {
    fn default() -> Self {
        ExecGrant {
            programs: Vec::new(),
            timeout_seconds: 30,
        }
    }
}

/// One `[[exec.programs]]` table.
#[derive(Deserialize, Serialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProgramGrant {
    /// The absolute path, compared as a string: no patterns, no `..`.
    pub path: String,
    /// Each entry is one allowed argument vector (argv after the program), one pattern per
    /// position; `[]` allows only no arguments. Required, so a grant never means "any".
    pub args: Vec<Vec<String>>,
    /// Environment variable names the driver may set.
    #[serde(default)]
    pub env: Vec<String>,
}

/// Since 0.2 `programs` is a list of tables: a bare path granted any argument vector.
fn programs<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<ProgramGrant>, D::Error> {
    use serde::de::Error;
    Vec::<toml::Value>::deserialize(deserializer)?
        .into_iter()
        .map(|entry| match entry {
            toml::Value::String(path) => Err(D::Error::custom(format!(
                "exec.programs: {path:?} is the 0.1 form (a bare path, any arguments), which is \
                 no longer accepted; list each program as a table with the argument vectors it \
                 may get: [[exec.programs]] path = {path:?}, args = [[\"--flag\", \"value-*\"]], \
                 env = [] (README, Policy > Migration)"
            ))),
            table => table
                .try_into()
                .map_err(|e: toml::de::Error| D::Error::custom(format!("exec.programs: {e}"))),
        })
        .collect()
}

/// Every program run through `exec` gets this `PATH`: a driver-chosen one would pick which
/// binary a script's `mount` or `mkfs` is.
pub const PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// Names the loader, libc, a shell or an interpreter act on before (or instead of) the
/// program's own code: each is a way to run other code as root, so no policy can grant one.
/// The allowlist is the rule; this is the second line behind it.
const NEVER_NAMES: [&str; 35] = [
    // glibc (its list of variables unsafe for setuid programs) and the loader
    "GCONV_PATH",
    "GETCONF_DIR",
    "GLIBC_TUNABLES",
    "HOSTALIASES",
    "LOCALDOMAIN",
    "LOCPATH",
    "NIS_PATH",
    "NLSPATH",
    "RESOLV_HOST_CONF",
    "RES_OPTIONS",
    "TMPDIR",
    "TZDIR",
    // shells
    "BASH_ENV",
    "ENV",
    "BASHOPTS",
    "SHELLOPTS",
    "PS4",
    "PROMPT_COMMAND",
    "IFS",
    "CDPATH",
    "GLOBIGNORE",
    "PATH",
    // interpreters and runtimes
    "NODE_OPTIONS",
    "NODE_PATH",
    "CLASSPATH",
    "JAVA_TOOL_OPTIONS",
    "_JAVA_OPTIONS",
    "JDK_JAVA_OPTIONS",
    "TCLLIBPATH",
    // libraries that load modules or run helpers named in the environment
    "OPENSSL_CONF",
    "OPENSSL_ENGINES",
    "OPENSSL_MODULES",
    "SSH_ASKPASS",
    "LESSOPEN",
    "LESSCLOSE",
];
const NEVER_PREFIXES: [&str; 9] = [
    "LD_",
    "MALLOC_",
    "BASH_FUNC_",
    "PYTHON",
    "PERL",
    "RUBY",
    "LUA_",
    "GIT_",
    "DYLD_",
];

/// Whether no policy may grant `name` (see [`NEVER_NAMES`]).
pub fn never_granted(name: &str) -> bool {
    NEVER_NAMES.contains(&name) || NEVER_PREFIXES.iter().any(|p| name.starts_with(p))
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// An absolute path with no empty, `.` or `..` component: what the policy lists is what is
/// compared, and what is opened.
fn validate_path(path: &str) -> Result<(), String> {
    let normal = path.len() > 1
        && path.starts_with('/')
        && !path.contains('\0')
        && path[1..]
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    if normal {
        Ok(())
    } else {
        Err(format!(
            "exec.programs: path {path:?} is not a normalized absolute path (no `.`, `..`, `//` or trailing `/`)"
        ))
    }
}

impl ExecGrant {
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=600).contains(&self.timeout_seconds) {
            return Err(format!(
                "exec.timeout_seconds must be between 1 and 600, not {}",
                self.timeout_seconds
            ));
        }
        let mut paths = BTreeSet::new();
        for program in &self.programs {
            let path = &program.path;
            validate_path(path)?;
            if !paths.insert(path) {
                return Err(format!("exec.programs: {path:?} is listed twice"));
            }
            let mut vectors = BTreeSet::new();
            for (i, vector) in program.args.iter().enumerate() {
                for pattern in vector {
                    ArgPattern::new(pattern).map_err(|e| {
                        format!("exec.programs {path:?}: args entry {}: {e}", i + 1)
                    })?;
                }
                if !vectors.insert(vector) {
                    return Err(format!(
                        "exec.programs {path:?}: args entry {} is listed twice",
                        i + 1
                    ));
                }
            }
            let mut names = BTreeSet::new();
            for name in &program.env {
                if !valid_name(name) {
                    return Err(format!(
                        "exec.programs {path:?}: env: {name:?} is not a variable name (letters, digits, `_`)"
                    ));
                }
                if never_granted(name) {
                    return Err(format!(
                        "exec.programs {path:?}: env: {name} can never be granted: it changes how \
                         programs are loaded or run"
                    ));
                }
                if !names.insert(name) {
                    return Err(format!(
                        "exec.programs {path:?}: env: {name} is listed twice"
                    ));
                }
            }
        }
        Ok(())
    }

    /// For `flex policy check` and `flex inspect`: each program with what it may get.
    pub fn summary(&self) -> String {
        let programs: Vec<String> = self
            .programs
            .iter()
            .map(|p| {
                let vectors = p.args.len().max(1);
                format!(
                    "{:?} with {vectors} argument vector{} only, env {:?}",
                    p.path,
                    if vectors == 1 { "" } else { "s" },
                    p.env
                )
            })
            .collect();
        format!(
            "{}, killed after {}s",
            programs.join("; "),
            self.timeout_seconds
        )
    }

    /// The rules of a grant that passed [`ExecGrant::validate`] (a pattern that does not compile
    /// drops its whole program: nothing is granted by mistake).
    pub fn compile(&self) -> Vec<Program> {
        self.programs
            .iter()
            .filter_map(|p| {
                let mut vectors = p
                    .args
                    .iter()
                    .map(|v| v.iter().map(|a| ArgPattern::new(a)).collect())
                    .collect::<Result<Vec<Vec<_>>, _>>()
                    .ok()?;
                if vectors.is_empty() {
                    vectors.push(Vec::new());
                }
                Some(Program {
                    path: p.path.clone(),
                    vectors,
                    env: p.env.iter().cloned().collect(),
                })
            })
            .collect()
    }
}

/// A wildcard never matches `/`, nor a `.` that starts the argument or follows a `/`: a path
/// pattern reaches neither `..` nor hidden files.
const GLOB: glob::MatchOptions = glob::MatchOptions {
    case_sensitive: true,
    require_literal_separator: true,
    require_literal_leading_dot: true,
};

/// One position of an argument vector.
#[derive(Debug)]
pub enum ArgPattern {
    Exact(String),
    Glob(glob::Pattern),
}

impl ArgPattern {
    /// A pattern with `*`, `?` or `[` is a glob (write a literal one as `[*]`, `[?]`, `[[]`).
    pub fn new(pattern: &str) -> Result<ArgPattern, String> {
        if pattern.contains('\0') {
            return Err(format!("pattern {pattern:?} contains a NUL byte"));
        }
        if !pattern.contains(['*', '?', '[']) {
            return Ok(ArgPattern::Exact(pattern.to_string()));
        }
        if pattern.contains("**") {
            return Err(format!(
                "invalid pattern {pattern:?}: `**` is not allowed (a `*` never matches `/`)"
            ));
        }
        glob::Pattern::new(pattern)
            .map(ArgPattern::Glob)
            .map_err(|e| format!("invalid pattern {pattern:?}: {e}"))
    }

    /// A glob that does not itself start with `-` never matches a flag: flags appear only where
    /// a pattern spells them.
    pub fn matches(&self, arg: &str) -> bool {
        match self {
            ArgPattern::Exact(value) => value == arg,
            ArgPattern::Glob(glob) => {
                (glob.as_str().starts_with('-') || !arg.starts_with('-'))
                    && glob.matches_with(arg, GLOB)
            }
        }
    }
}

/// One compiled program grant.
#[derive(Debug)]
pub struct Program {
    pub path: String,
    vectors: Vec<Vec<ArgPattern>>,
    env: BTreeSet<String>,
}

impl Program {
    /// The (0-based) args entry that allows `args`. The reason never repeats an argument or a
    /// pattern: either may be a secret, and reasons go to the driver and the audit.
    pub fn match_args(&self, args: &[String]) -> Result<usize, String> {
        let path = &self.path;
        if let Some(i) = args.iter().position(|a| a.contains('\0')) {
            return Err(format!("denied: argument {} contains a NUL byte", i + 1));
        }
        let allows = |v: &Vec<ArgPattern>| {
            v.len() == args.len() && v.iter().zip(args).all(|(p, a)| p.matches(a))
        };
        if let Some(entry) = self.vectors.iter().position(allows) {
            return Ok(entry);
        }
        let agreeing =
            |v: &Vec<ArgPattern>| v.iter().zip(args).take_while(|(p, a)| p.matches(a)).count();
        let nearest = self
            .vectors
            .iter()
            .filter(|v| v.len() == args.len())
            .map(agreeing)
            .max();
        let Some(first_wrong) = nearest else {
            let counts: BTreeSet<usize> = self.vectors.iter().map(Vec::len).collect();
            let counts: Vec<String> = counts.iter().map(|n| n.to_string()).collect();
            return Err(format!(
                "denied: exec.programs {path:?} allows {} arguments, not {}",
                counts.join(" or "),
                args.len()
            ));
        };
        let flag = match args[first_wrong].starts_with('-') {
            true => " (a flag: flags may appear only where a pattern spells them)",
            false => "",
        };
        Err(format!(
            "denied: the {} arguments match no args entry of exec.programs {path:?}: argument {} is not allowed there{flag}",
            args.len(),
            first_wrong + 1
        ))
    }

    /// The driver may set only the listed names, never one of [`never_granted`], each once.
    pub fn check_env(&self, env: &[(String, String)]) -> Result<(), String> {
        let mut seen = BTreeSet::new();
        for (name, value) in env {
            if name.is_empty() || name.contains(['=', '\0']) {
                return Err(format!(
                    "denied: invalid environment variable name {name:?}"
                ));
            }
            if never_granted(name) {
                return Err(format!(
                    "denied: environment variable {name} changes how programs are loaded or run; \
                     no policy can grant it"
                ));
            }
            if !self.env.contains(name) {
                return Err(format!(
                    "denied: environment variable {name} is not in the env list of exec.programs {:?}",
                    self.path
                ));
            }
            if value.contains('\0') {
                return Err(format!(
                    "denied: environment variable {name} contains a NUL byte"
                ));
            }
            if !seen.insert(name) {
                return Err(format!("denied: environment variable {name} is set twice"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(text: &str) -> Result<ExecGrant, String> {
        #[derive(Deserialize)]
        struct Wrapper {
            exec: ExecGrant,
        }
        let grant = toml::from_str::<Wrapper>(text)
            .map_err(|e| e.to_string())?
            .exec;
        grant.validate().map(|()| grant)
    }

    fn program(args: &[&[&str]], env: &[&str]) -> Program {
        let grant = ExecGrant {
            programs: vec![ProgramGrant {
                path: "/usr/sbin/iscsiadm".into(),
                args: args
                    .iter()
                    .map(|v| v.iter().map(|a| a.to_string()).collect())
                    .collect(),
                env: env.iter().map(|e| e.to_string()).collect(),
            }],
            timeout_seconds: 30,
        };
        grant.validate().unwrap();
        grant.compile().pop().unwrap()
    }

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|a| a.to_string()).collect()
    }

    const DISCOVERY: &[&str] = &[
        "-m",
        "discovery",
        "-t",
        "sendtargets",
        "-p",
        "[0-9]*:[0-9]*",
    ];
    const LOGIN: &[&str] = &["-m", "node", "-T", "iqn.*", "--login"];

    #[test]
    fn argument_vectors_match_position_by_position_with_the_exact_length() {
        let p = program(&[DISCOVERY, LOGIN], &[]);
        let allowed = [
            (
                vec![
                    "-m",
                    "discovery",
                    "-t",
                    "sendtargets",
                    "-p",
                    "10.0.0.1:3260",
                ],
                0,
            ),
            (vec!["-m", "node", "-T", "iqn.2003-01.org:t1", "--login"], 1),
        ];
        for (args, entry) in allowed {
            assert_eq!(p.match_args(&strings(&args)), Ok(entry), "{args:?}");
        }
        for args in [
            // extra, missing, reordered arguments
            vec!["-m", "node", "-T", "iqn.x", "--login", "--debug=8"],
            vec!["-m", "node", "-T", "iqn.x"],
            vec!["-T", "iqn.x", "-m", "node", "--login"],
            vec![],
            // flags where a glob stands: never matched by a glob that does not start with '-'
            vec!["-m", "node", "-T", "-c", "--login"],
            vec!["-m", "discovery", "-t", "sendtargets", "-p", "-1:2"],
            // a glob's `*` never crosses `/` nor matches a leading dot
            vec!["-m", "node", "-T", "iqn.a/../../etc", "--login"],
            // exact values are exact
            vec!["-m", "node ", "-T", "iqn.x", "--login"],
            vec!["-m", "NODE", "-T", "iqn.x", "--login"],
            vec!["-m", "node", "-T", "iqn.x", "--login\0"],
        ] {
            let err = p.match_args(&strings(&args)).unwrap_err();
            assert!(err.starts_with("denied: "), "{args:?}: {err}");
        }
        let err = p
            .match_args(&strings(&["-m", "node", "-T", "-c", "--login"]))
            .unwrap_err();
        assert!(
            err.contains("argument 4") && err.contains("a flag"),
            "{err}"
        );
        assert!(
            !err.contains("-c"),
            "the reason never repeats an argument: {err}"
        );
        let err = p.match_args(&strings(&["a"])).unwrap_err();
        assert!(err.contains("allows 5 or 6 arguments, not 1"), "{err}");
    }

    #[test]
    fn flags_appear_only_where_a_pattern_spells_them() {
        let p = program(&[&["-c", "*"], &["--size=[0-9]*"]], &[]);
        assert!(p.match_args(&strings(&["-c", "echo hi"])).is_ok());
        assert!(p.match_args(&strings(&["-c", "--config=/x"])).is_err());
        assert!(p.match_args(&strings(&["--size=12"])).is_ok());
        assert!(p.match_args(&strings(&["--size=x"])).is_err());
        assert!(p.match_args(&strings(&["-x"])).is_err());
        // a glob that starts with '-' is how a policy allows a family of flags
        let p = program(&[&["-[a-z]"]], &[]);
        assert!(p.match_args(&strings(&["-x"])).is_ok());
        assert!(p.match_args(&strings(&["-xy"])).is_err());
    }

    #[test]
    fn empty_args_allows_only_no_arguments() {
        let p = program(&[], &[]);
        assert_eq!(p.match_args(&[]), Ok(0));
        assert!(p.match_args(&strings(&["--help"])).is_err());
        assert!(p.match_args(&strings(&[""])).is_err());
    }

    #[test]
    fn environment_is_an_allowlist_and_some_names_are_never_granted() {
        let p = program(&[], &["LANG", "ISCSI_TARGET"]);
        let env = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            p.check_env(&env(&[("LANG", "C"), ("ISCSI_TARGET", "x")])),
            Ok(())
        );
        for (pairs, expected) in [
            (vec![("HOME", "/state")], "not in the env list"),
            (vec![("LD_PRELOAD", "/tmp/x.so")], "no policy can grant it"),
            (vec![("BASH_ENV", "/state/x")], "no policy can grant it"),
            (
                vec![("BASH_FUNC_ls%%", "() { id; }")],
                "no policy can grant it",
            ),
            (vec![("lang", "C")], "not in the env list"),
            (vec![("A=B", "1")], "invalid environment variable name"),
            (vec![("", "1")], "invalid environment variable name"),
            (vec![("LANG", "C\0")], "NUL"),
            (vec![("LANG", "C"), ("LANG", "fr")], "set twice"),
        ] {
            let err = p.check_env(&env(&pairs)).unwrap_err();
            assert!(
                err.starts_with("denied: ") && err.contains(expected),
                "{pairs:?}: {err}"
            );
        }
        for name in [
            "LD_PRELOAD",
            "LD_LIBRARY_PATH",
            "GCONV_PATH",
            "GLIBC_TUNABLES",
            "NLSPATH",
            "BASH_ENV",
            "ENV",
            "BASH_FUNC_x%%",
            "PYTHONPATH",
            "PYTHONSTARTUP",
            "PERL5OPT",
            "PERL5LIB",
            "PATH",
            "MALLOC_CHECK_",
        ] {
            assert!(never_granted(name), "{name}");
        }
        for name in ["LANG", "LC_ALL", "HOME", "TZ", "ISCSI_TARGET"] {
            assert!(!never_granted(name), "{name}");
        }
    }

    #[test]
    fn the_policy_refuses_bad_grants_at_parse_time() {
        let table = |program: &str| format!("[exec]\n[[exec.programs]]\n{program}\n");
        for (text, expected) in [
            (
                "[exec]\nprograms = [\"/usr/bin/x\"]".to_string(),
                "[[exec.programs]] path = \"/usr/bin/x\", args = [[",
            ),
            (
                table("path = \"x\"\nargs = []"),
                "not a normalized absolute path",
            ),
            (
                table("path = \"/usr/bin/../bin/true\"\nargs = []"),
                "not a normalized absolute path",
            ),
            (table("path = \"/usr/bin/\"\nargs = []"), "not a normalized"),
            (
                table("path = \"/usr//bin/true\"\nargs = []"),
                "not a normalized",
            ),
            (table("path = \"/bin/true\""), "missing field `args`"),
            (
                table("path = \"/bin/true\"\nargs = [[\"[\"]]"),
                "invalid pattern \"[\"",
            ),
            (
                table("path = \"/bin/true\"\nargs = [[\"/**\"]]"),
                "`**` is not allowed",
            ),
            (
                table("path = \"/bin/true\"\nargs = [[\"a\"], [\"a\"]]"),
                "args entry 2 is listed twice",
            ),
            (
                table("path = \"/bin/true\"\nargs = []\nenv = [\"LD_PRELOAD\"]"),
                "LD_PRELOAD can never be granted",
            ),
            (
                table("path = \"/bin/true\"\nargs = []\nenv = [\"BASH_ENV\"]"),
                "BASH_ENV can never be granted",
            ),
            (
                table("path = \"/bin/true\"\nargs = []\nenv = [\"A B\"]"),
                "not a variable name",
            ),
            (
                table("path = \"/bin/true\"\nargs = []\nenv = [\"A\", \"A\"]"),
                "A is listed twice",
            ),
            (
                table("path = \"/bin/true\"\nargs = []\nflags = []"),
                "unknown field `flags`",
            ),
            (
                format!(
                    "{}[[exec.programs]]\npath = \"/bin/true\"\nargs = []\n",
                    table("path = \"/bin/true\"\nargs = []")
                ),
                "\"/bin/true\" is listed twice",
            ),
            (
                "[exec]\ntimeout_seconds = 0".to_string(),
                "exec.timeout_seconds",
            ),
        ] {
            let err = grant(&text).unwrap_err();
            assert!(err.contains(expected), "{text}: {err}");
        }
        let ok = grant(
            "[exec]\ntimeout_seconds = 30\n[[exec.programs]]\npath = \"/usr/sbin/iscsiadm\"\n\
             args = [[\"-m\", \"discovery\", \"-t\", \"sendtargets\", \"-p\", \"[0-9]*:[0-9]*\"],\n\
                     [\"-m\", \"node\", \"-T\", \"iqn.*\", \"--login\"]]\nenv = [\"LANG\"]\n",
        )
        .unwrap();
        assert_eq!(ok.programs[0].args.len(), 2);
        assert_eq!(ok.compile().len(), 1);
    }
}
