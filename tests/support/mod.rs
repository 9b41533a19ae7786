//! Test support: fault injection for chain tests, and a harness that runs the real
//! `token-service` binary on free loopback ports.

#![allow(dead_code)]

pub mod fault;
pub mod process;
pub mod redis;
pub mod softhsm;
pub mod vectors;
