//! Test harness shared by the integration tests.
pub mod netns;
pub mod harness;
pub mod banharness;
pub mod etcd;
