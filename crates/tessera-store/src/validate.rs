//! Length checks shared by consents, tasks and entries, against [`crate::limits`].

use crate::StoreError;
use crate::error::InvalidInput;
use crate::limits::{MAX_CLIENT_LEN, MAX_SCOPE_LEN, MAX_SCOPES, MAX_SERVER_LEN, MAX_SUBJECT_LEN};

/// Checks the client, subject and server lengths shared by consents and tasks.
pub(crate) fn validate_parties(
    client: &str,
    subject: &str,
    server: &str,
) -> Result<(), StoreError> {
    if client.is_empty() || client.len() > MAX_CLIENT_LEN {
        return Err(StoreError::Invalid(InvalidInput::Client {
            len: client.len(),
        }));
    }
    check_len("subject", subject, 1, MAX_SUBJECT_LEN)?;
    check_len("server", server, 1, MAX_SERVER_LEN)
}

/// Checks the scope count and each scope's length.
pub(crate) fn validate_scopes(scopes: &[String]) -> Result<(), StoreError> {
    if scopes.is_empty() || scopes.len() > MAX_SCOPES {
        return Err(StoreError::Invalid(InvalidInput::ScopeCount {
            count: scopes.len(),
        }));
    }
    for (index, scope) in scopes.iter().enumerate() {
        if scope.is_empty() || scope.len() > MAX_SCOPE_LEN {
            return Err(StoreError::Invalid(InvalidInput::Scope {
                index,
                len: scope.len(),
            }));
        }
    }
    Ok(())
}

/// Fails with [`InvalidInput::Field`] unless `min <= value.len() <= max`.
pub(crate) fn check_len(
    field: &'static str,
    value: &str,
    min: usize,
    max: usize,
) -> Result<(), StoreError> {
    if value.len() < min || value.len() > max {
        return Err(StoreError::Invalid(InvalidInput::Field {
            field,
            min,
            max,
            len: value.len(),
        }));
    }
    Ok(())
}
