//! Arm PrimeCell UART (PL011) driver: polled transmit, enough for a console.
//! Register map: Arm DDI 0183, "PrimeCell UART (PL011) Technical Reference Manual", 3.2.

use tock_registers::{
    interfaces::{Readable, Writeable},
    register_bitfields, register_structs,
    registers::{ReadOnly, ReadWrite, WriteOnly},
};

use super::mmio::Mmio;

register_bitfields! {
    u32,
    /// Flag register.
    FR [
        /// Transmit FIFO full.
        TXFF OFFSET(5) NUMBITS(1) [],
        /// UART busy transmitting.
        BUSY OFFSET(3) NUMBITS(1) []
    ],
    /// Line control.
    LCR_H [
        /// Word length.
        WLEN OFFSET(5) NUMBITS(2) [EightBit = 0b11],
        /// FIFOs enabled.
        FEN OFFSET(4) NUMBITS(1) []
    ],
    /// Control.
    CR [
        /// Receive enable.
        RXE OFFSET(9) NUMBITS(1) [],
        /// Transmit enable.
        TXE OFFSET(8) NUMBITS(1) [],
        /// UART enable.
        UARTEN OFFSET(0) NUMBITS(1) []
    ]
}

register_structs! {
    #[allow(non_snake_case)]
    Registers {
        (0x00 => DR: ReadWrite<u32>),
        (0x04 => _reserved0),
        (0x18 => FR: ReadOnly<u32, FR::Register>),
        (0x1c => _reserved1),
        (0x24 => IBRD: WriteOnly<u32>),
        (0x28 => FBRD: WriteOnly<u32>),
        (0x2c => LCR_H: WriteOnly<u32, LCR_H::Register>),
        (0x30 => CR: WriteOnly<u32, CR::Register>),
        (0x34 => _reserved2),
        (0x44 => ICR: WriteOnly<u32>),
        (0x48 => @END),
    }
}

/// Baud rate of the console.
pub const BAUD: u32 = 115_200;

/// A PL011 at a fixed address.
pub struct Pl011 {
    regs: Mmio<Registers>,
}

impl Pl011 {
    /// # Safety
    /// `base` must be the address of a PL011, accessible as Device memory while the driver lives,
    /// and no other code may drive that UART.
    pub const unsafe fn new(base: usize) -> Self {
        // SAFETY: forwarded to the caller: `base` is a PL011 only this driver uses.
        let regs = unsafe { Mmio::new(base) };
        Self { regs }
    }

    /// Programs 115200 8N1 with FIFOs for a reference clock of `clock_hz`. The divisor is
    /// clock / (16 * baud) as a 16.6 fixed-point number (PL011 TRM 3.3.6).
    pub fn init(&mut self, clock_hz: u32) {
        self.flush();
        self.regs.CR.set(0);
        self.regs.ICR.set(0x7ff);
        let divisor_x64 = (u64::from(clock_hz) * 4 + u64::from(BAUD) / 2) / u64::from(BAUD);
        self.regs.IBRD.set((divisor_x64 >> 6) as u32);
        self.regs.FBRD.set((divisor_x64 & 0x3f) as u32);
        self.regs
            .LCR_H
            .write(LCR_H::WLEN::EightBit + LCR_H::FEN::SET);
        self.regs
            .CR
            .write(CR::UARTEN::SET + CR::TXE::SET + CR::RXE::SET);
    }

    /// Sends one byte, waiting for room in the FIFO.
    pub fn write_byte(&mut self, byte: u8) {
        while self.regs.FR.is_set(FR::TXFF) {
            core::hint::spin_loop();
        }
        self.regs.DR.set(u32::from(byte));
    }

    /// Waits until everything written has left the UART.
    pub fn flush(&self) {
        while self.regs.FR.is_set(FR::BUSY) {
            core::hint::spin_loop();
        }
    }
}

impl core::fmt::Write for Pl011 {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for byte in s.bytes() {
            if byte == b'\n' {
                self.write_byte(b'\r');
            }
            self.write_byte(byte);
        }
        Ok(())
    }
}
