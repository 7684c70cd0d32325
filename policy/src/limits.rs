//! Limits of a policy text, checked before it is parsed: its size, its number of YAML documents
//! and how deeply it nests. A YAML parser takes time quadratic in the depth of nested flow
//! collections (`{a: {a: ...}}`: 20,000 levels took 1.6 s, 200,000 over a minute), and one
//! document per three bytes makes a megabyte of text a third of a million documents; policies
//! need none of that (a policy nests about ten levels), so a text beyond a limit is refused whole,
//! with the limit named, in time linear in its size.
//!
//! The scan is a YAML-aware approximation that never under-counts nesting a parser would see:
//! flow brackets outside quoted scalars and comments, block indentation levels and compact
//! sequence entries (`- - -`); the content of block scalars (`|`, `>`) is skipped.

/// What a policy text may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextLimits {
    pub max_bytes: usize,
    pub max_documents: usize,
    pub max_depth: usize,
}

impl TextLimits {
    /// 1 MiB (the most a Kubernetes object may be is about 1.5 MB), 1,000 documents, nesting 64.
    pub const DEFAULT: Self = Self {
        max_bytes: 1 << 20,
        max_documents: 1000,
        max_depth: 64,
    };
}

impl Default for TextLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A text beyond a limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextLimitError {
    #[error("larger than the limit of {max} bytes for a policy file")]
    TooLarge { bytes: usize, max: usize },
    #[error("more than the limit of {max} YAML documents in one policy file")]
    TooManyDocuments { max: usize },
    #[error("nesting depth {depth} at line {line} is more than the limit of {max}")]
    TooDeep {
        depth: usize,
        line: usize,
        max: usize,
    },
}

/// Check `text` against `limits` without parsing it.
pub fn check(text: &str, limits: TextLimits) -> Result<(), TextLimitError> {
    if text.len() > limits.max_bytes {
        return Err(TextLimitError::TooLarge {
            bytes: text.len(),
            max: limits.max_bytes,
        });
    }
    let mut scan = Scan::default();
    let mut documents = 1;
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        if scan.flow == 0 && scan.quote.is_none() && is_document_marker(line) {
            documents += 1;
            if documents > limits.max_documents {
                return Err(TextLimitError::TooManyDocuments {
                    max: limits.max_documents,
                });
            }
            scan.indents.clear();
            scan.block_scalar = None;
            continue;
        }
        let depth = scan.line(line, limits.max_depth);
        if depth > limits.max_depth {
            return Err(TextLimitError::TooDeep {
                depth,
                line: number,
                max: limits.max_depth,
            });
        }
    }
    Ok(())
}

/// `---` or `...` at the start of a line, alone or followed by a space.
fn is_document_marker(line: &str) -> bool {
    ["---", "..."].iter().any(|marker| {
        line.strip_prefix(marker)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
    })
}

#[derive(Debug, Default)]
struct Scan {
    /// Open flow collections.
    flow: usize,
    /// Inside a quoted scalar that goes on past the end of a line.
    quote: Option<char>,
    /// Indentation of the enclosing block collections.
    indents: Vec<usize>,
    /// The indentation a block scalar's header line had: its content is more indented.
    block_scalar: Option<usize>,
}

impl Scan {
    /// Take one line; returns the deepest nesting on it (stopping once it is beyond `max`).
    fn line(&mut self, line: &str, max: usize) -> usize {
        let indent = line.len() - line.trim_start_matches(' ').len();
        let content = &line[indent..];
        if let Some(header) = self.block_scalar {
            if content.is_empty() || indent > header {
                return 0;
            }
            self.block_scalar = None;
        }
        let mut deepest = 0;
        let mut rest = content;
        if self.flow == 0 && self.quote.is_none() {
            if content.is_empty() || content.starts_with('#') {
                return 0;
            }
            while self.indents.last().is_some_and(|&top| top >= indent) {
                self.indents.pop();
            }
            self.indents.push(indent);
            // Compact nested sequences: `- - - x`.
            let mut entries = 0;
            while let Some(after) = rest
                .strip_prefix("- ")
                .or_else(|| (rest == "-").then_some(""))
            {
                entries += 1;
                rest = after.trim_start_matches(' ');
            }
            deepest = self.indents.len() + entries;
        }
        let base = self.indents.len();
        let mut chars = rest.char_indices().peekable();
        let mut previous = ' ';
        while let Some((at, c)) = chars.next() {
            match self.quote {
                Some('\'') => {
                    if c == '\'' {
                        if chars.peek().is_some_and(|&(_, n)| n == '\'') {
                            chars.next();
                        } else {
                            self.quote = None;
                        }
                    }
                }
                Some(_) => match c {
                    '\\' => {
                        chars.next();
                    }
                    '"' => self.quote = None,
                    _ => {}
                },
                None => match c {
                    '#' if previous == ' ' || previous == '\t' => break,
                    '\'' | '"' if starts_scalar(previous) => self.quote = Some(c),
                    '[' | '{' => {
                        self.flow += 1;
                        deepest = deepest.max(base + self.flow);
                        if deepest > max {
                            return deepest;
                        }
                    }
                    ']' | '}' => self.flow = self.flow.saturating_sub(1),
                    '|' | '>' if self.flow == 0 && previous == ' ' => {
                        let header = rest[at + 1..].trim_start_matches([
                            '+', '-', '1', '2', '3', '4', '5', '6', '7', '8', '9',
                        ]);
                        let header = header.trim_start();
                        if header.is_empty() || header.starts_with('#') {
                            self.block_scalar = Some(indent);
                            break;
                        }
                    }
                    _ => {}
                },
            }
            previous = c;
        }
        deepest
    }
}

/// Whether a quote after `previous` opens a quoted scalar (not an apostrophe inside a word).
fn starts_scalar(previous: char) -> bool {
    matches!(previous, ' ' | '\t' | '[' | '{' | ',' | ':' | '-' | '?')
}

#[cfg(test)]
mod tests;
