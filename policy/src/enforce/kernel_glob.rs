//! Path globs in the form the kernel programs check: a literal prefix, a literal suffix, and
//! between them nothing (an exact path), one path component (`*`) or anything (`**`).
//!
//! The kernel finds every pattern whose prefix starts a path with one longest-prefix-match lookup
//! (`BPF_MAP_TYPE_LPM_TRIE`), every pattern whose suffix ends it with one lookup of the reversed
//! path, and then checks lengths and, for `*`, that the part between holds no `/` (by counting the
//! path's slashes). So a glob is judged in the kernel when, after `{a,b}` expansion, each
//! alternative has at most one wildcard:
//!
//! | glob | kernel patterns |
//! |---|---|
//! | `/usr/bin/java` | exact `/usr/bin/java` |
//! | `/usr/bin/*`, `/usr/lib/lib*.so` | prefix `/usr/bin/`, one component, suffix ``; prefix `/usr/lib/lib`, one component, suffix `.so` |
//! | `/tmp/**` | prefix `/tmp/`, anything |
//! | `**/java` | exact `java`; anything, suffix `/java` |
//! | `/opt/**/bin/java` | exact `/opt/bin/java`; prefix `/opt/`, anything, suffix `/bin/java` |
//! | `/x/{a,b}/*` | `/x/a/` + one component; `/x/b/` + one component |
//!
//! Anything else (`?`, `[...]`, two wildcards such as `**/*.so`, a wildcard inside `{...}`) is
//! refused with the glob named: the kernel never judges an approximation. The meaning is
//! globset's with `literal_separator` (the audit evaluator's, [`crate::compile`]); the tests check
//! the two agree.

use std::fmt;

/// Longest literal prefix or suffix of a kernel pattern: the kernel's trie keys hold 256 bytes,
/// one of which says which of its two tables (old and new policy set) the key belongs to.
pub const LITERAL_MAX: usize = 254;
/// Alternatives one glob may expand to (`{a,b}{c,d}` is four).
pub const ALTERNATIVES_MAX: usize = 16;

/// What lies between a pattern's prefix and suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Middle {
    /// Nothing: the path is the prefix (the suffix is empty).
    Exact,
    /// Any bytes but `/` (`*`).
    Component,
    /// Any bytes (`**`).
    Any,
}

/// One pattern the kernel checks.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KernelPattern {
    pub prefix: String,
    pub middle: Middle,
    pub suffix: String,
}

impl KernelPattern {
    fn exact(path: String) -> Self {
        Self {
            prefix: path,
            middle: Middle::Exact,
            suffix: String::new(),
        }
    }

    /// Whether `path` matches, as the kernel decides it.
    #[must_use]
    pub fn matches(&self, path: &str) -> bool {
        let (p, s) = (self.prefix.as_bytes(), self.suffix.as_bytes());
        let path = path.as_bytes();
        if path.len() < p.len() + s.len() || !path.starts_with(p) || !path.ends_with(s) {
            return false;
        }
        match self.middle {
            Middle::Exact => path.len() == p.len(),
            Middle::Component => !path[p.len()..path.len() - s.len()].contains(&b'/'),
            Middle::Any => true,
        }
    }

    /// The `/` in prefix and suffix: for [`Middle::Component`] the kernel checks that the path
    /// has exactly this many.
    #[must_use]
    pub fn slashes(&self) -> usize {
        self.prefix
            .bytes()
            .chain(self.suffix.bytes())
            .filter(|b| *b == b'/')
            .count()
    }
}

impl fmt::Display for KernelPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let middle = match self.middle {
            Middle::Exact => "",
            Middle::Component => "<component>",
            Middle::Any => "<anything>",
        };
        write!(f, "{}{middle}{}", self.prefix, self.suffix)
    }
}

/// A piece of one alternative of a glob.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    /// `*`, or `**` that is not a whole path component: any bytes but `/`.
    Star,
    /// `**` as a whole path component.
    Recursive,
}

/// The kernel patterns of `glob` (any of them matching is the glob matching), or why the kernel
/// cannot judge it.
pub fn compile(glob: &str) -> Result<Vec<KernelPattern>, String> {
    let mut patterns = Vec::new();
    for alternative in alternatives(glob)? {
        for pattern in alternative_patterns(&alternative)? {
            if pattern.prefix.len() > LITERAL_MAX || pattern.suffix.len() > LITERAL_MAX {
                return Err(format!(
                    "a literal part of {pattern} is longer than the {LITERAL_MAX} bytes the kernel compares"
                ));
            }
            if !patterns.contains(&pattern) {
                patterns.push(pattern);
            }
        }
    }
    Ok(patterns)
}

/// A glob's token, before `{...}` expansion.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// A literal character (escaped or not special).
    Char(char),
    Star,
    Recursive,
    /// `{a,b}`: literal alternatives.
    Group(Vec<String>),
}

/// Tokens of `glob`. A `**` is recursive when it is a whole path component in the glob as
/// written (start or `/` before it, end or `/` after it), as globset decides.
fn tokens(glob: &str) -> Result<Vec<Token>, String> {
    let mut chars: Vec<(char, bool)> = Vec::new();
    let mut it = glob.chars();
    while let Some(c) = it.next() {
        if c == '\\' {
            let escaped = it
                .next()
                .ok_or_else(|| "it ends with a lone `\\`".to_owned())?;
            chars.push((escaped, true));
        } else {
            chars.push((c, false));
        }
    }
    let special = |i: usize, c: char| chars.get(i) == Some(&(c, false));
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let (c, escaped) = chars[i];
        if escaped {
            if c == '/' {
                return Err("it escapes a `/`".into());
            }
            out.push(Token::Char(c));
            i += 1;
            continue;
        }
        match c {
            '*' => {
                let run = chars[i..]
                    .iter()
                    .take_while(|c| **c == ('*', false))
                    .count();
                if run > 2 {
                    return Err("it has a run of more than two `*`".into());
                }
                let whole = (i == 0 || special(i - 1, '/'))
                    && (i + run == chars.len() || special(i + run, '/'));
                out.push(if run == 2 && whole {
                    Token::Recursive
                } else {
                    Token::Star
                });
                i += run;
            }
            '?' => return Err("`?` (one character) cannot be judged by the kernel".into()),
            '[' | ']' => {
                return Err("`[...]` (a character class) cannot be judged by the kernel".into());
            }
            '}' => return Err("it has an unopened `}`".into()),
            '{' => {
                let close = (i + 1..chars.len())
                    .find(|j| special(*j, '}'))
                    .ok_or_else(|| "it has an unclosed `{`".to_owned())?;
                let group = &chars[i + 1..close];
                if group.contains(&('{', false)) {
                    return Err("it nests `{...}` groups".into());
                }
                if group
                    .iter()
                    .any(|c| !c.1 && matches!(c.0, '*' | '?' | '[' | ']'))
                {
                    return Err("it has a wildcard inside `{...}`".into());
                }
                if group.contains(&('/', true)) {
                    return Err("it escapes a `/`".into());
                }
                let options: Vec<String> = group
                    .split(|c| *c == (',', false))
                    .map(|o| o.iter().map(|c| c.0).collect())
                    .collect();
                if options.iter().any(String::is_empty) {
                    return Err("it has an empty alternative in `{...}`".into());
                }
                out.push(Token::Group(options));
                i = close + 1;
            }
            c => {
                out.push(Token::Char(c));
                i += 1;
            }
        }
    }
    Ok(out)
}

/// Every alternative of `glob`'s `{...}` groups, as pieces.
fn alternatives(glob: &str) -> Result<Vec<Vec<Piece>>, String> {
    let mut alternatives: Vec<Vec<Piece>> = vec![Vec::new()];
    let push_literal = |pieces: &mut Vec<Piece>, text: &str| match pieces.last_mut() {
        Some(Piece::Literal(last)) => last.push_str(text),
        _ => pieces.push(Piece::Literal(text.to_owned())),
    };
    for token in tokens(glob)? {
        match token {
            Token::Char(c) => {
                for a in &mut alternatives {
                    push_literal(a, c.encode_utf8(&mut [0; 4]));
                }
            }
            Token::Star => alternatives.iter_mut().for_each(|a| a.push(Piece::Star)),
            Token::Recursive => alternatives
                .iter_mut()
                .for_each(|a| a.push(Piece::Recursive)),
            Token::Group(options) => {
                if alternatives.len() * options.len() > ALTERNATIVES_MAX {
                    return Err(format!(
                        "its `{{...}}` groups expand to more than {ALTERNATIVES_MAX} alternatives"
                    ));
                }
                alternatives = alternatives
                    .iter()
                    .flat_map(|a| {
                        options.iter().map(move |o| {
                            let mut next = a.clone();
                            push_literal(&mut next, o);
                            next
                        })
                    })
                    .collect();
            }
        }
    }
    Ok(alternatives)
}

/// The patterns of one alternative, with globset's meaning of `**`: at the start followed by
/// `/` it is `(?:/?|.*/)`, at the end after `/` it is `/.*`, between two `/` it is `(?:/|/.*/)`.
fn alternative_patterns(pieces: &[Piece]) -> Result<Vec<KernelPattern>, String> {
    let wildcards = pieces
        .iter()
        .filter(|p| !matches!(p, Piece::Literal(_)))
        .count();
    if wildcards > 1 {
        return Err(
            "it has more than one wildcard (`*` or `**`); the kernel judges at most one per alternative"
                .into(),
        );
    }
    let text = |p: Option<&Piece>| match p {
        Some(Piece::Literal(s)) => s.clone(),
        _ => String::new(),
    };
    let Some(at) = pieces.iter().position(|p| !matches!(p, Piece::Literal(_))) else {
        return Ok(vec![KernelPattern::exact(text(pieces.first()))]);
    };
    let before = if at > 0 {
        text(pieces.get(at - 1))
    } else {
        String::new()
    };
    let after = text(pieces.get(at + 1));
    if pieces[at] == Piece::Star {
        return Ok(vec![KernelPattern {
            prefix: before,
            middle: Middle::Component,
            suffix: after,
        }]);
    }
    // `**` as a whole component: `before` is empty or ends with `/`, `after` empty or starts
    // with `/`.
    let patterns = match (before.is_empty(), after.is_empty()) {
        (true, true) => vec![KernelPattern {
            prefix: String::new(),
            middle: Middle::Any,
            suffix: String::new(),
        }],
        (true, false) => {
            // `**/R`: R, /R, anything/R.
            let rest = after[1..].to_owned();
            if rest.is_empty() {
                return Err("`**/` alone means any path to globset, write `**`".into());
            }
            vec![
                KernelPattern::exact(rest.clone()),
                KernelPattern {
                    prefix: String::new(),
                    middle: Middle::Any,
                    suffix: format!("/{rest}"),
                },
            ]
        }
        // `A/**`: A/ followed by anything.
        (false, true) => vec![KernelPattern {
            prefix: before,
            middle: Middle::Any,
            suffix: String::new(),
        }],
        (false, false) => {
            // `A/**/B`: A/B, A/anything/B.
            let a = &before[..before.len() - 1];
            let b = &after[1..];
            vec![
                KernelPattern::exact(format!("{a}/{b}")),
                KernelPattern {
                    prefix: format!("{a}/"),
                    middle: Middle::Any,
                    suffix: format!("/{b}"),
                },
            ]
        }
    };
    Ok(patterns)
}

#[cfg(test)]
mod tests;
