//! One module per command: the body of `mmp COMMAND`, from parsed arguments to an exit
//! status. Argument definitions are in `args.rs`.

pub(crate) mod check;
pub(crate) mod clear;
pub(crate) mod demo;
pub(crate) mod dump;
pub(crate) mod format;
pub(crate) mod hold;
pub(crate) mod hostid;
pub(crate) mod mount;
pub(crate) mod pr;
pub(crate) mod status;
pub(crate) mod tune;
