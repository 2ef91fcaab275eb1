//! Keys: sessiongate's own signing keys and the JWKS it publishes. (Issuers' JWKS caches join
//! this module with the providers.)

mod jwk_private;
pub mod signing;

pub use signing::{KeyError, KeyKind, SigningKey, SigningKeys};
