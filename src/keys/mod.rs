//! Keys: sessiongate's own signing keys and the JWKS it publishes. (Issuers' JWKS caches join
//! this module with the providers.)

mod der;
pub mod issuer;
mod jwk_private;
pub mod jwks;
pub mod signing;

pub use signing::{KeyError, KeyKind, SigningKey, SigningKeys};
