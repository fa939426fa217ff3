//! A simulated SPC-4 persistent-reservation device server for unit tests: logical-unit
//! scope, the service actions mmp uses, generation counting, UNIT ATTENTION for preempted
//! nexuses, and the write rule of each reservation type. Several [`Nexus`] handles share one
//! [`Target`], as hosts (or paths) share a LUN.
//!
//! It answers in bytes (CDBs parsed, answers encoded, sense in fixed format), so the code
//! under test runs its real builders and parsers against it.

use std::cell::RefCell;
use std::rc::Rc;

use super::{Completion, Dir, PrError, Transport, Type};

/// One registration: which nexus, which key.
#[derive(Clone, Copy, Debug)]
struct Registration {
    nexus: usize,
    key: u64,
}

/// The device server's state.
#[derive(Default)]
pub(super) struct Target {
    generation: u32,
    regs: Vec<Registration>,
    /// (holder nexus, key, type)
    reservation: Option<(usize, u64, Type)>,
    /// Pending unit attentions per nexus (ASC, ASCQ).
    ua: Vec<(usize, u8, u8)>,
    /// Every PERSISTENT RESERVE OUT service action executed, with the nexus.
    pub(super) log: Vec<(usize, &'static str)>,
    /// Answer PREEMPT AND ABORT with INVALID COMMAND OPERATION CODE... (an old device).
    pub(super) no_preempt_abort: bool,
    /// Before the next command of this nexus, run this closure (a racing host).
    #[allow(clippy::type_complexity)]
    pub(super) interleave: Option<(usize, Box<dyn FnMut(&mut Target)>)>,
}

const GOOD: u8 = 0x00;
const CHECK: u8 = 0x02;
const CONFLICT: u8 = 0x18;

fn sense(key: u8, asc: u8, ascq: u8) -> [u8; 18] {
    let mut s = [0u8; 18];
    s[0] = 0x70;
    s[2] = key;
    s[7] = 10;
    s[12] = asc;
    s[13] = ascq;
    s
}

enum Answer {
    Status(u8),
    Sense(u8, u8, u8),
    Data(Vec<u8>),
}

impl Target {
    /// A new device, shared.
    pub(super) fn shared() -> Rc<RefCell<Self>> {
        Rc::new(RefCell::new(Self::default()))
    }

    fn key_of(&self, nexus: usize) -> Option<u64> {
        self.regs.iter().find(|r| r.nexus == nexus).map(|r| r.key)
    }

    fn unregister(&mut self, nexus: usize) {
        self.regs.retain(|r| r.nexus != nexus);
        if let Some((holder, _, t)) = self.reservation {
            let all = t.is_all_registrants();
            if (!all && holder == nexus) || (all && self.regs.is_empty()) {
                self.reservation = None;
            }
        }
    }

    /// Whether a write from `nexus` is allowed now (reads are always allowed by the Write
    /// Exclusive types).
    pub(super) fn may_write(&self, nexus: usize) -> bool {
        match self.reservation {
            None => true,
            Some((holder, _, Type::WriteExclusive | Type::ExclusiveAccess)) => holder == nexus,
            Some(_) => self.key_of(nexus).is_some(),
        }
    }

    /// The registered keys, one per nexus.
    pub(super) fn keys(&self) -> Vec<u64> {
        self.regs.iter().map(|r| r.key).collect()
    }

    /// The reservation key and type.
    pub(super) fn holder(&self) -> Option<(u64, Type)> {
        self.reservation.map(|(_, k, t)| (k, t))
    }

    /// Registers `key` for `nexus` directly (setting up a scenario).
    pub(super) fn force_register(&mut self, nexus: usize, key: u64) {
        self.unregister(nexus);
        self.regs.push(Registration { nexus, key });
        self.generation += 1;
    }

    /// Makes `nexus` hold a reservation directly (setting up a scenario).
    pub(super) fn force_reserve(&mut self, nexus: usize, t: Type) {
        let key = self.key_of(nexus).expect("registered");
        let key = if t.is_all_registrants() { 0 } else { key };
        self.reservation = Some((nexus, key, t));
    }

    /// `nexus` preempts every other registration directly (a racing host).
    pub(super) fn preempt_all_but(&mut self, nexus: usize) {
        let victims: Vec<usize> = self
            .regs
            .iter()
            .filter(|r| r.nexus != nexus)
            .map(|r| r.nexus)
            .collect();
        self.regs.retain(|r| r.nexus == nexus);
        for v in victims {
            self.ua.push((v, 0x2a, 0x05));
        }
        self.generation += 1;
    }

    /// Queues a unit attention for `nexus`.
    pub(super) fn add_ua(&mut self, nexus: usize, asc: u8, ascq: u8) {
        self.ua.push((nexus, asc, ascq));
    }

    fn run(&mut self, nexus: usize, cdb: &[u8], out: &[u8]) -> Answer {
        if let Some(i) = self.ua.iter().position(|u| u.0 == nexus) {
            let (_, asc, ascq) = self.ua.remove(i);
            return Answer::Sense(0x6, asc, ascq);
        }
        match cdb[0] {
            0x5e => self.run_in(cdb),
            0x5f => self.run_out(nexus, cdb, out),
            _ => Answer::Sense(0x5, 0x20, 0x00),
        }
    }

    fn run_in(&self, cdb: &[u8]) -> Answer {
        let mut d = self.generation.to_be_bytes().to_vec();
        match cdb[1] & 0x1f {
            0 => {
                let len = u32::try_from(self.regs.len() * 8).expect("small");
                d.extend_from_slice(&len.to_be_bytes());
                for r in &self.regs {
                    d.extend_from_slice(&r.key.to_be_bytes());
                }
            }
            1 => match self.reservation {
                None => d.extend_from_slice(&0u32.to_be_bytes()),
                Some((_, key, t)) => {
                    d.extend_from_slice(&16u32.to_be_bytes());
                    d.extend_from_slice(&key.to_be_bytes());
                    d.extend_from_slice(&[0, 0, 0, 0, 0, t.code(), 0, 0]);
                }
            },
            2 => d = vec![0, 8, 0x0d, 0x80, 0xea, 0x01, 0, 0],
            _ => return Answer::Sense(0x5, 0x24, 0x00),
        }
        Answer::Data(d)
    }

    #[allow(clippy::too_many_lines)]
    fn run_out(&mut self, nexus: usize, cdb: &[u8], p: &[u8]) -> Answer {
        let action = cdb[1] & 0x1f;
        let type_code = cdb[2] & 0x0f;
        if cdb[2] >> 4 != 0 {
            return Answer::Sense(0x5, 0x24, 0x00);
        }
        if p.len() != 24 || u32::from_be_bytes([cdb[5], cdb[6], cdb[7], cdb[8]]) != 24 {
            return Answer::Sense(0x5, 0x1a, 0x00);
        }
        let rk = u64::from_be_bytes(p[0..8].try_into().expect("8"));
        let sark = u64::from_be_bytes(p[8..16].try_into().expect("8"));
        let mine = self.key_of(nexus);
        let name = match action {
            0 => "REGISTER",
            1 => "RESERVE",
            2 => "RELEASE",
            3 => "CLEAR",
            4 => "PREEMPT",
            5 => "PREEMPT AND ABORT",
            6 => "REGISTER AND IGNORE EXISTING KEY",
            _ => return Answer::Sense(0x5, 0x24, 0x00),
        };
        if action == 5 && self.no_preempt_abort {
            return Answer::Sense(0x5, 0x24, 0x00);
        }
        self.log.push((nexus, name));
        match action {
            0 | 6 => {
                if action == 0 && mine.unwrap_or(0) != rk {
                    return Answer::Status(CONFLICT);
                }
                if sark == 0 {
                    if mine.is_some() {
                        self.unregister(nexus);
                        self.generation += 1;
                    }
                } else {
                    if let Some(r) = self.regs.iter_mut().find(|r| r.nexus == nexus) {
                        r.key = sark;
                        if let Some((h, k, t)) = self.reservation.as_mut()
                            && *h == nexus
                            && !t.is_all_registrants()
                        {
                            *k = sark;
                        }
                    } else {
                        self.regs.push(Registration { nexus, key: sark });
                    }
                    self.generation += 1;
                }
                Answer::Status(GOOD)
            }
            1..=5 if mine != Some(rk) => Answer::Status(CONFLICT),
            1 => {
                let Some(t) = Type::from_code(type_code) else {
                    return Answer::Sense(0x5, 0x24, 0x00);
                };
                match self.reservation {
                    None => {
                        let key = if t.is_all_registrants() { 0 } else { rk };
                        self.reservation = Some((nexus, key, t));
                        Answer::Status(GOOD)
                    }
                    Some((h, _, ht)) if h == nexus && ht == t => Answer::Status(GOOD),
                    Some((_, _, ht)) if ht.is_all_registrants() && ht == t => Answer::Status(GOOD),
                    Some(_) => Answer::Status(CONFLICT),
                }
            }
            2 => match self.reservation {
                None => Answer::Status(GOOD),
                Some((h, _, ht)) => {
                    let holder = if ht.is_all_registrants() {
                        true
                    } else {
                        h == nexus
                    };
                    if !holder {
                        return Answer::Status(GOOD);
                    }
                    if ht.code() != type_code {
                        return Answer::Sense(0x5, 0x26, 0x04);
                    }
                    self.reservation = None;
                    Answer::Status(GOOD)
                }
            },
            3 => {
                self.regs.clear();
                self.reservation = None;
                self.generation += 1;
                Answer::Status(GOOD)
            }
            _ => {
                // PREEMPT (AND ABORT)
                let Some(t) = Type::from_code(type_code) else {
                    return Answer::Sense(0x5, 0x24, 0x00);
                };
                let holds = match self.reservation {
                    Some((_, k, ht)) => {
                        if ht.is_all_registrants() {
                            sark == 0
                        } else {
                            k == sark
                        }
                    }
                    None => false,
                };
                if sark == 0 && !holds {
                    return Answer::Sense(0x5, 0x26, 0x00);
                }
                let victims: Vec<usize> = self
                    .regs
                    .iter()
                    .filter(|r| r.nexus != nexus && (sark == 0 || r.key == sark))
                    .map(|r| r.nexus)
                    .collect();
                if !holds && victims.is_empty() {
                    return Answer::Status(CONFLICT);
                }
                self.regs.retain(|r| !victims.contains(&r.nexus));
                for v in victims {
                    self.ua.push((v, 0x2a, 0x05));
                }
                if holds {
                    let key = if t.is_all_registrants() { 0 } else { rk };
                    self.reservation = Some((nexus, key, t));
                }
                self.generation += 1;
                Answer::Status(GOOD)
            }
        }
    }
}

/// One I_T nexus to a shared [`Target`].
pub(super) struct Nexus {
    pub(super) target: Rc<RefCell<Target>>,
    pub(super) id: usize,
}

impl Transport for Nexus {
    fn execute(&self, cdb: &[u8], dir: Dir<'_>, _timeout_ms: u32) -> Result<Completion, PrError> {
        let hook = self.target.borrow_mut().interleave.take();
        if let Some((who, mut f)) = hook {
            if who == self.id {
                f(&mut self.target.borrow_mut());
            } else {
                self.target.borrow_mut().interleave = Some((who, f));
            }
        }
        let out: &[u8] = match &dir {
            Dir::ToDevice(b) => b,
            _ => &[],
        };
        let answer = self.target.borrow_mut().run(self.id, cdb, out);
        Ok(match answer {
            Answer::Status(s) => Completion::with_sense(s, &[]),
            Answer::Sense(k, a, q) => Completion::with_sense(CHECK, &sense(k, a, q)),
            Answer::Data(d) => {
                let mut c = Completion::with_sense(GOOD, &[]);
                if let Dir::FromDevice(buf) = dir {
                    let n = d.len().min(buf.len());
                    buf[..n].copy_from_slice(&d[..n]);
                    c.data_len = n;
                }
                c
            }
        })
    }
}
