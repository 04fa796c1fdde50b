//! A panic must end the run with failure: the runner expects this binary (named `should_panic*`)
//! to exit with the failure status and the panic message, and counts anything else as a failed test.

#![no_std]
#![no_main]

execmem::entry!(main);

fn main() {
    execmem::println!("expect failure: panicked at");
    execmem::println!("about to panic on purpose");
    panic!("deliberate panic: the runner must see a failure");
}
