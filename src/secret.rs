//! A string that never prints: tokens, client secrets and JWT keys.

use std::fmt;

/// A secret value. `Debug` and `Display` print `***`; the value is only
/// reachable through [`Secret::expose`], so it cannot reach a log by accident.
///
/// ```
/// let secret = wow::Secret::new("hunter2");
/// assert_eq!(format!("{secret} {secret:?}"), "*** ***");
/// assert_eq!(secret.expose(), "hunter2");
/// ```
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

/// What a secret prints as, in logs and in `--print-config`.
pub const MASK: &str = "***";

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether no secret was given.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_never_formats_its_value() {
        let secret = Secret::new("s3cr3t-value");
        let printed = format!("{secret} {secret:?} {:?}", Some(&secret));
        assert!(!printed.contains("s3cr3t-value"));
    }
}
