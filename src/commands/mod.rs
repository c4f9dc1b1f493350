//! The one-shot commands: `sgw init`, `sgw enroll`, `sgw config check`, `sgw acl ...`,
//! `sgw status`, `sgw health`, `sgw doctor` and `sgw state migrate`. Each returns the exit code it wants; errors are
//! [`crate::daemon::Error`], whose `Input` kind exits 2.

pub mod acl;
pub mod admin;
pub mod doctor;
pub mod setup;
pub mod state;
