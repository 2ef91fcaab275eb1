//! What sessiongate asks of other servers over HTTP: issuers' key sets and discovery documents
//! (fetched by `keys::issuer` through [`http`]), and the legacy provider's UserInfo
//! ([`userinfo`]), within a per-provider [`budget`].

pub mod budget;
pub mod http;
pub mod userinfo;
