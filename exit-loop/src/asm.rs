//! The handful of x86 instructions the calibration guests are made of, encoded for the mode
//! the guest runs in. Real mode's default operand size is 16 bits (a 32-bit register takes the
//! 0x66 prefix); 64-bit mode's is 32 bits (a 16-bit one takes 0x66), and there 0x40-0x4f are
//! REX prefixes, so `inc`/`dec reg` must use the `FF /0`, `FF /1` forms.
use crate::LOAD_ADDR;

/// The CPU mode the guest runs in.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Real mode, CS base 0 (the tracer must add the CS base to RIP on every exit).
    #[default]
    Real,
    /// 64-bit long mode, identity-mapped paging (linear address = RIP, as in any 64-bit guest).
    Long,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Real => "real",
            Mode::Long => "long",
        }
    }
}

/// Guest code being assembled at [`LOAD_ADDR`].
pub(crate) struct Asm {
    mode: Mode,
    pub code: Vec<u8>,
}

/// A `jcc rel8` whose target is not known yet: [`Asm::land`] fills it in.
pub(crate) struct ForwardJump(usize);

impl Asm {
    pub fn new(mode: Mode) -> Asm {
        Asm { mode, code: Vec::new() }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Guest address of the next instruction.
    pub fn here(&self) -> u64 {
        LOAD_ADDR + self.code.len() as u64
    }

    fn bytes(&mut self, b: &[u8]) {
        self.code.extend_from_slice(b);
    }

    /// Operand-size prefix for a 32-bit operation.
    fn op32(&mut self) {
        if self.mode == Mode::Real {
            self.code.push(0x66);
        }
    }

    /// Operand-size prefix for a 16-bit operation.
    fn op16(&mut self) {
        if self.mode == Mode::Long {
            self.code.push(0x66);
        }
    }

    /// `inc`/`dec` of register `reg` (0 = eax .. 7 = edi) at the current operand size:
    /// one byte `0x40+reg`/`0x48+reg` in real mode, `FF C0+reg`/`FF C8+reg` in 64-bit mode.
    fn inc_dec(&mut self, dec: bool, reg: u8) {
        let short = if dec { 0x48 } else { 0x40 } + reg;
        match self.mode {
            Mode::Real => self.code.push(short),
            Mode::Long => self.bytes(&[0xFF, 0xC0 + (short - 0x40)]),
        }
    }

    pub fn mov_ecx_imm(&mut self, n: u32) {
        self.op32();
        self.code.push(0xB9);
        self.bytes(&n.to_le_bytes());
    }

    pub fn mov_ebx_imm(&mut self, n: u32) {
        self.op32();
        self.code.push(0xBB);
        self.bytes(&n.to_le_bytes());
    }

    pub fn mov_dx_imm(&mut self, port: u16) {
        self.op16();
        self.code.push(0xBA);
        self.bytes(&port.to_le_bytes());
    }

    pub fn test_ecx_ecx(&mut self) {
        self.op32();
        self.bytes(&[0x85, 0xC9]);
    }

    pub fn mov_ecx_eax(&mut self) {
        self.op32();
        self.bytes(&[0x89, 0xC1]);
    }

    pub fn dec_ecx(&mut self) {
        self.op32();
        self.inc_dec(true, 1);
    }

    pub fn inc_ebx(&mut self) {
        self.op32();
        self.inc_dec(false, 3);
    }

    pub fn dec_ebx(&mut self) {
        self.op32();
        self.inc_dec(true, 3);
    }

    pub fn inc_dx(&mut self) {
        self.op16();
        self.inc_dec(false, 2);
    }

    /// `out dx, al` (0xEE) or `in al, dx` (0xEC): the same byte in every mode.
    pub fn port_op(&mut self, op: u8) {
        self.code.push(op);
    }

    pub fn in_eax_dx(&mut self) {
        self.op32();
        self.code.push(0xED);
    }

    pub fn hlt(&mut self) {
        self.code.push(0xF4);
    }

    /// `jnz` back to `target` (a `code` offset).
    pub fn jnz_to(&mut self, target: usize) {
        let rel = target as i64 - (self.code.len() as i64 + 2);
        self.bytes(&[0x75, i8::try_from(rel).expect("short jump") as u8]);
    }

    /// `jz` to a later place, given by [`Asm::land`].
    pub fn jz_forward(&mut self) -> ForwardJump {
        self.bytes(&[0x74, 0]);
        ForwardJump(self.code.len())
    }

    /// The pending jump lands here.
    pub fn land(&mut self, j: ForwardJump) {
        let rel = self.code.len() - j.0;
        self.code[j.0 - 1] = u8::try_from(rel).ok().filter(|r| *r < 0x80).expect("short jump");
    }
}
