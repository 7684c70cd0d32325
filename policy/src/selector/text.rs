//! The text form of a label selector, as `kubectl -l` and the API's `labelSelector` parameter
//! take it, with the whole grammar of Kubernetes' `labels.Parse`:
//!
//! ```text
//! selector    ::= requirement | requirement "," selector
//! requirement ::= [!] KEY [ set-based | exact-match ]
//! set-based   ::= ("in" | "notin") "(" VALUE { "," VALUE } ")"
//! exact-match ::= ("=" | "==" | "!=") VALUE
//! ```
//!
//! `KEY` alone requires the label, `!KEY` its absence; `!=` and `notin` also pass when the label
//! is absent. The text becomes a [`LabelSelector`] (every requirement a `matchExpressions` entry)
//! compiled by [`Selector::compile`], so keys and values get the API server's checks.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

use super::Selector;
use crate::field_path::FieldPath;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("label selector {text:?}: {reason}")]
pub struct ParseError {
    pub text: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token<'a> {
    Word(&'a str),
    Not,
    Equals,
    NotEquals,
    Comma,
    Open,
    Close,
}

impl Token<'_> {
    fn describe(&self) -> String {
        match self {
            Token::Word(word) => format!("{word:?}"),
            Token::Not => "\"!\"".into(),
            Token::Equals => "\"=\"".into(),
            Token::NotEquals => "\"!=\"".into(),
            Token::Comma => "\",\"".into(),
            Token::Open => "\"(\"".into(),
            Token::Close => "\")\"".into(),
        }
    }
}

fn tokens(text: &str) -> Vec<Token<'_>> {
    let mut out = Vec::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start();
        let Some(c) = rest.chars().next() else {
            return out;
        };
        let (token, len) = match c {
            '!' if rest.starts_with("!=") => (Token::NotEquals, 2),
            '!' => (Token::Not, 1),
            '=' if rest.starts_with("==") => (Token::Equals, 2),
            '=' => (Token::Equals, 1),
            ',' => (Token::Comma, 1),
            '(' => (Token::Open, 1),
            ')' => (Token::Close, 1),
            _ => {
                let len = rest
                    .find(|c: char| c.is_whitespace() || "!=,()".contains(c))
                    .unwrap_or(rest.len());
                (Token::Word(&rest[..len]), len)
            }
        };
        out.push(token);
        rest = &rest[len..];
    }
}

struct Parser<'a> {
    tokens: Vec<Token<'a>>,
    at: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<&Token<'a>> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Option<Token<'a>> {
        let token = self.tokens.get(self.at).cloned();
        self.at += 1;
        token
    }

    fn found(token: Option<&Token<'_>>) -> String {
        token.map_or_else(|| "the end".to_owned(), Token::describe)
    }

    /// A value: a word, or nothing (an empty value) before `,`, `)` or the end.
    fn value(&mut self) -> Result<String, String> {
        match self.peek() {
            Some(Token::Word(word)) => {
                let word = (*word).to_owned();
                self.at += 1;
                Ok(word)
            }
            None | Some(Token::Comma | Token::Close) => Ok(String::new()),
            other => Err(format!("expected a value, found {}", Self::found(other))),
        }
    }

    fn requirement(&mut self) -> Result<LabelSelectorRequirement, String> {
        let absent = self.peek() == Some(&Token::Not);
        if absent {
            self.at += 1;
        }
        let key = match self.next() {
            Some(Token::Word(key)) => key.to_owned(),
            other => {
                return Err(format!(
                    "expected a label key, found {}",
                    Self::found(other.as_ref())
                ));
            }
        };
        let requirement = |operator: &str, values: Option<Vec<String>>| LabelSelectorRequirement {
            key: key.clone(),
            operator: operator.to_owned(),
            values,
        };
        if absent {
            return Ok(requirement("DoesNotExist", None));
        }
        match self.peek().cloned() {
            None | Some(Token::Comma) => Ok(requirement("Exists", None)),
            Some(Token::Equals) => {
                self.at += 1;
                Ok(requirement("In", Some(vec![self.value()?])))
            }
            Some(Token::NotEquals) => {
                self.at += 1;
                Ok(requirement("NotIn", Some(vec![self.value()?])))
            }
            Some(Token::Word(word @ ("in" | "notin"))) => {
                let operator = if word == "in" { "In" } else { "NotIn" };
                self.at += 1;
                if self.next() != Some(Token::Open) {
                    return Err(format!("expected \"(\" after {word:?}"));
                }
                let mut values = vec![self.value()?];
                loop {
                    match self.next() {
                        Some(Token::Comma) => values.push(self.value()?),
                        Some(Token::Close) => break,
                        other => {
                            return Err(format!(
                                "expected \",\" or \")\" in the values of {key:?}, found {}",
                                Self::found(other.as_ref())
                            ));
                        }
                    }
                }
                Ok(requirement(operator, Some(values)))
            }
            Some(other) => Err(format!(
                "expected =, ==, !=, in or notin after {key:?}, found {}",
                other.describe()
            )),
        }
    }
}

/// The requirements of `text` as a [`LabelSelector`] (not checked yet).
pub fn parse_label_selector(text: &str) -> Result<LabelSelector, ParseError> {
    let error = |reason: String| ParseError {
        text: text.to_owned(),
        reason,
    };
    let mut parser = Parser {
        tokens: tokens(text),
        at: 0,
    };
    if parser.peek().is_none() {
        return Err(error("no requirement".into()));
    }
    let mut requirements = Vec::new();
    loop {
        requirements.push(parser.requirement().map_err(error)?);
        match parser.next() {
            None => break,
            Some(Token::Comma) if parser.peek().is_some() => {}
            Some(Token::Comma) => return Err(error("a requirement must follow \",\"".into())),
            Some(other) => {
                return Err(error(format!(
                    "expected \",\" or the end, found {}",
                    other.describe()
                )));
            }
        }
    }
    Ok(LabelSelector {
        match_labels: None,
        match_expressions: Some(requirements),
    })
}

impl Selector {
    /// Parse and check the text form (`app=web,tier in (fe,edge),!canary`).
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let selector = parse_label_selector(text)?;
        Self::compile(&selector, &FieldPath::root()).map_err(|problems| ParseError {
            text: text.to_owned(),
            reason: problems
                .iter()
                .map(|p| p.reason.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        })
    }
}

/// `text` cut at the commas between requirements (not those inside `in (...)`), each trimmed:
/// `app=web,env in (a,b)` is `["app=web", "env in (a,b)"]`.
#[must_use]
pub fn split_requirements(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(text[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(text[start..].trim());
    parts
}

#[cfg(test)]
mod tests;
