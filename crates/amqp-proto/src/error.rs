//! Decode errors, each with the AMQP reply code the connection closes with.

/// AMQP 0-9-1 reply codes (spec section 1.2, "constants").
pub mod reply {
    /// Success (connection.close / channel.close without error).
    pub const REPLY_SUCCESS: u16 = 200;
    /// basic.return: the message is too large.
    pub const CONTENT_TOO_LARGE: u16 = 311;
    /// basic.return: no queue matched a mandatory message.
    pub const NO_ROUTE: u16 = 312;
    /// The server is going away (connection.close).
    pub const CONNECTION_FORCED: u16 = 320;
    /// The vhost is not served.
    pub const INVALID_PATH: u16 = 402;
    /// Access refused (ACL, exclusive queue of another connection).
    pub const ACCESS_REFUSED: u16 = 403;
    /// No such exchange or queue.
    pub const NOT_FOUND: u16 = 404;
    /// An exclusive queue used by another connection.
    pub const RESOURCE_LOCKED: u16 = 405;
    /// A declare whose arguments differ from what exists, an unknown delivery tag, ...
    pub const PRECONDITION_FAILED: u16 = 406;
    /// A frame that does not parse.
    pub const FRAME_ERROR: u16 = 501;
    /// Method arguments that do not parse or make no sense.
    pub const SYNTAX_ERROR: u16 = 502;
    /// A method not allowed now (e.g. a second connection.open).
    pub const COMMAND_INVALID: u16 = 503;
    /// A method on a channel that is not open.
    pub const CHANNEL_ERROR: u16 = 504;
    /// A frame of the wrong type for the channel's state.
    pub const UNEXPECTED_FRAME: u16 = 505;
    /// The server ran out of a resource (e.g. channel-max).
    pub const RESOURCE_ERROR: u16 = 506;
    /// Not allowed by the server's policy.
    pub const NOT_ALLOWED: u16 = 530;
    /// A class, method or option the server does not implement.
    pub const NOT_IMPLEMENTED: u16 = 540;
    /// The server failed.
    pub const INTERNAL_ERROR: u16 = 541;
}

/// Why bytes could not be decoded. [`DecodeError::reply_code`] is what the peer is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The frame's declared size is over the negotiated frame-max.
    #[error("frame of {size} bytes is over frame-max {max}")]
    TooLarge {
        /// Whole frame size (header, payload and end octet).
        size: u64,
        /// frame-max in force.
        max: u32,
    },
    /// The octet after the payload is not 0xCE.
    #[error("frame end octet is {0:#04x}, not 0xCE")]
    BadFrameEnd(u8),
    /// A frame type other than 1, 2, 3 or 8.
    #[error("unknown frame type {0}")]
    UnknownFrameType(u8),
    /// A heartbeat frame on a channel other than 0, or with a payload.
    #[error("heartbeat frame with channel {channel} and {size} payload bytes (must be 0 and 0)")]
    BadHeartbeat {
        /// Its channel.
        channel: u16,
        /// Its payload size.
        size: u32,
    },
    /// Method arguments or a content header cut short or out of range.
    #[error("malformed {0}")]
    Syntax(String),
    /// A class and method this codec does not know.
    #[error("unknown method {class}.{method}")]
    UnknownMethod {
        /// Class id.
        class: u16,
        /// Method id.
        method: u16,
    },
}

impl DecodeError {
    /// The reply code of the connection.close that answers this error.
    pub fn reply_code(&self) -> u16 {
        match self {
            Self::TooLarge { .. }
            | Self::BadFrameEnd(_)
            | Self::UnknownFrameType(_)
            | Self::BadHeartbeat { .. } => reply::FRAME_ERROR,
            Self::Syntax(_) => reply::SYNTAX_ERROR,
            Self::UnknownMethod { .. } => reply::NOT_IMPLEMENTED,
        }
    }
}
