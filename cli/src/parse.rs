//! Option values the CLI reads through clap value parsers but checks itself, so
//! that the message names the VE, network or option: a malformed size,
//! percentage or rate is a usage error (exit 2, as clap's own), reported in one
//! line with that context when the command asks for the value. What an
//! operation refuses (a value out of range for this host, say) is a failed
//! operation (exit 1).

use std::convert::Infallible;
use std::str::FromStr;

/// A usage error found after clap has parsed the command line: a malformed
/// option value, or a command given nothing to do. `vectl` exits 2 for it.
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// A [`Usage`] error with this message.
pub fn usage(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Usage(msg.into()))
}

/// Whether the error is a usage error (exit 2).
pub fn is_usage(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.is::<Usage>())
}

/// An option's text and what parsing it gave; the error surfaces only when the
/// command asks for the value, with the context only it knows.
#[derive(Debug, Clone)]
pub struct Checked<T> {
    value: Result<T, String>,
}

impl<T: Clone> Checked<T> {
    /// The value, or the usage error `{context}--{flag}: {why}` when the text
    /// was malformed.
    pub fn get(&self, context: &str, flag: &str) -> anyhow::Result<T> {
        self.value
            .clone()
            .map_err(|e| usage(format!("{context}--{flag}: {e}")))
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

/// A yes/no option's value (`yes`, `no`, `on`, `off`, `true`, `false`).
pub fn yes_no(s: &str) -> Result<bool, String> {
    match s {
        "yes" | "on" | "true" | "1" => Ok(true),
        "no" | "off" | "false" | "0" => Ok(false),
        _ => Err(format!("{s}: expected yes or no")),
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
