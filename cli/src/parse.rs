//! Option values the CLI reads through clap value parsers but checks itself:
//! a malformed size, percentage or rate is a failed operation naming the VE,
//! network or option (exit 1), never a clap usage error (exit 2).

use std::convert::Infallible;
use std::str::FromStr;

/// An option's text and what parsing it gave; the error surfaces only when the
/// command asks for the value, with the context only it knows.
#[derive(Debug, Clone)]
pub struct Checked<T> {
    value: Result<T, String>,
}

impl<T: Clone> Checked<T> {
    /// The value, or `{context}--{flag}: {why}` when the text was malformed.
    pub fn get(&self, context: &str, flag: &str) -> anyhow::Result<T> {
        self.value
            .clone()
            .map_err(|e| anyhow::anyhow!("{context}--{flag}: {e}"))
    }
}

/// A clap value parser for any type with `FromStr` (its error says why).
pub fn text<T: FromStr<Err: std::fmt::Display>>(s: &str) -> Result<Checked<T>, Infallible> {
    Ok(Checked {
        value: s.parse().map_err(|e: T::Err| e.to_string()),
    })
}

/// A clap value parser built from a parse function (`parse_count`).
pub fn with<T: 'static, E: std::fmt::Display + 'static>(
    f: fn(&str) -> Result<T, E>,
) -> impl Fn(&str) -> Result<Checked<T>, Infallible> + Clone + Send + Sync + 'static {
    move |s| {
        Ok(Checked {
            value: f(s).map_err(|e| e.to_string()),
        })
    }
}

/// The value of an optional checked option.
pub fn opt<T: Clone>(
    v: &Option<Checked<T>>,
    context: &str,
    flag: &str,
) -> anyhow::Result<Option<T>> {
    v.as_ref().map(|c| c.get(context, flag)).transpose()
}
