//! Architecture layer: everything that is assembly or touches system registers lives below here.
//! The portable core never calls it directly; the kernel runtime wires the two together.

pub mod aarch64;
