//! vectl's end-to-end tests on the real kernel: one test executable, one module per
//! area (`cargo test -p integration --test suite -- MODULE::`). Every test drives
//! the `vectl` binary built for this run ([`integration::vectl_bin`]) on its own
//! isolated host ([`integration::TestHost`]); a test the host cannot run prints
//! `SKIP: <test>: <reason>` and records it ([`integration::skip`]).

mod common;

mod admission;
mod autostart;
mod backup;
mod bad_input;
mod changes;
mod clone;
mod concurrency;
mod console;
mod crash;
mod crash_changes;
mod debootstrap;
mod escape;
mod exec;
mod host_limits;
mod host_services;
mod hostile_files;
mod import_host;
mod isolation;
mod lifecycle;
mod limits;
mod migrate;
mod network;
mod oci;
mod oci_runtime;
mod package;
mod procview;
mod qos;
mod replicate;
mod roots;
mod stats;
mod stop;
mod storage;
mod template_build;
mod templates;
mod terminal;
mod upgrade;
mod userns;
mod vm_host_features;
mod xfs_pool;
