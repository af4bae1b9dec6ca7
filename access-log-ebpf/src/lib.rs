#![no_std]
// The library target exists so the user-space crate can name this one as a build dependency;
// the programs are in the `access-log` binary target (src/main.rs).
