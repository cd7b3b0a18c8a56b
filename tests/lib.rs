//! Test harness shared by the integration tests.
pub mod banharness;
pub mod etcd;
pub mod harness;
pub mod netns;
