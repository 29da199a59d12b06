//! Decoding errors of wire types.

/// Why bytes from the network were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtoError {
    #[error("message of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("malformed message: {reason}")]
    Malformed { reason: String },
    #[error("unsupported protocol version {got} (this build speaks {ours})")]
    Version { got: u16, ours: u16 },
    #[error("not a valid code: {reason}")]
    BadCode { reason: String },
}

impl ProtoError {
    pub(crate) fn malformed(reason: impl ToString) -> Self {
        ProtoError::Malformed {
            reason: reason.to_string(),
        }
    }
}
