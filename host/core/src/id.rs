//! Validated identifiers. Tenants, users and groups are named by short printable strings so
//! they are readable in logs and stable across tenants' own systems.

use std::fmt;
use std::sync::Arc;

/// Longest id in bytes.
pub const MAX_ID_LEN: usize = 64;

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("id is empty")]
    Empty,
    #[error("id is {0} bytes, longer than {MAX_ID_LEN}")]
    TooLong(usize),
    #[error("id contains {0:?}; allowed: ASCII letters, digits, '-', '_', '.', ':', '@'")]
    BadChar(char),
    /// `.` and `..` name a directory and its parent wherever an id becomes a path segment
    /// (a file name, a URL path, an operator's script), so they are never ids.
    #[error("id {0:?} is a path segment ('.' or '..'), not a name")]
    DotSegment(&'static str),
}

fn validate(s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > MAX_ID_LEN {
        return Err(IdError::TooLong(s.len()));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '@')))
    {
        return Err(IdError::BadChar(c));
    }
    match s {
        "." => Err(IdError::DotSegment(".")),
        ".." => Err(IdError::DotSegment("..")),
        _ => Ok(()),
    }
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        /// Cheap to clone (shared string); at most [`MAX_ID_LEN`] bytes of `[A-Za-z0-9-_.:@]`.
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Validates and wraps `s`.
            pub fn new(s: &str) -> Result<Self, IdError> {
                validate(s)?;
                Ok(Self(Arc::from(s)))
            }

            /// The id as a string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), &*self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }
    };
}

id_type!(
    /// A tenant: one app's backend, with its own secret, users and groups.
    TenantId
);
id_type!(
    /// A user within a tenant.
    UserId
);
id_type!(
    /// A group within a tenant.
    GroupId
);

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expect: Result<(), IdError>) {
        assert_eq!(GroupId::new(input).map(|_| ()), expect, "input {input:?}");
    }

    #[test]
    fn validation() {
        check("general", Ok(()));
        check("user-1_a.b:c@d", Ok(()));
        check("", Err(IdError::Empty));
        check(&"x".repeat(64), Ok(()));
        check(&"x".repeat(65), Err(IdError::TooLong(65)));
        check("a b", Err(IdError::BadChar(' ')));
        check("a/b", Err(IdError::BadChar('/')));
        check("é", Err(IdError::BadChar('é')));
        check("a\0", Err(IdError::BadChar('\0')));
    }

    #[test]
    fn dot_segments_are_not_ids_of_any_kind() {
        for input in [".", ".."] {
            check(
                input,
                Err(IdError::DotSegment(if input == "." { "." } else { ".." })),
            );
            assert!(TenantId::new(input).is_err(), "tenant {input:?}");
            assert!(UserId::new(input).is_err(), "user {input:?}");
        }
        // Dots inside a longer id stay allowed.
        check("...", Ok(()));
        check(".a", Ok(()));
        check("a..b", Ok(()));
    }
}
